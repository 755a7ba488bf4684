package main

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
	"csbs/scheduler"
)

// policyFlags are shared by create and update; update sends only the
// flags that were set.
func policyFlags(create bool) []cli.Flag {
	required := ""
	if create {
		required = " (required)"
	}
	return []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "policy `NAME` (1-255 of A-Z a-z 0-9 _ -)" + required},
		&cli.StringSliceFlag{Name: "time", Usage: "execution time `HH:MM` (repeat, at least 1 h apart)" + required},
		&cli.IntFlag{Name: "every-days", Usage: "run every `N` days"},
		&cli.StringFlag{Name: "weekdays", Usage: "run on `DAYS`, e.g. mon,thu"},
		&cli.StringFlag{Name: "timezone", Usage: "IANA `ZONE` of the times, e.g. Asia/Shanghai (default UTC)"},
		&cli.IntFlag{Name: "max-backups", Usage: "keep the newest `N` automatic backups (1-99999)"},
		&cli.IntFlag{Name: "retention-days", Usage: "keep automatic backups for `N` days (1-99999)"},
		&cli.IntFlag{Name: "keep-daily", Usage: "long-term: also keep the newest backup of each of the last `N` days"},
		&cli.IntFlag{Name: "keep-weekly", Usage: "long-term: ... of each of the last `N` weeks"},
		&cli.IntFlag{Name: "keep-monthly", Usage: "long-term: ... of each of the last `N` months"},
		&cli.IntFlag{Name: "keep-yearly", Usage: "long-term: ... of each of the last `N` years"},
		&cli.BoolFlag{Name: "disabled", Usage: "create the policy disabled", Hidden: !create},
	}
}

func policyRequest(c *cli.Context) api.PolicyRequest {
	var r api.PolicyRequest
	intp := func(name string) *int {
		if !c.IsSet(name) {
			return nil
		}
		v := c.Int(name)
		return &v
	}
	strp := func(name string) *string {
		if !c.IsSet(name) {
			return nil
		}
		v := c.String(name)
		return &v
	}
	r.Name = strp("name")
	r.Timezone = strp("timezone")
	if c.IsSet("time") {
		r.Times = c.StringSlice("time")
	}
	r.EveryDays = intp("every-days")
	if c.IsSet("weekdays") {
		r.Weekdays = strings.Split(c.String("weekdays"), ",")
	}
	r.MaxBackups = intp("max-backups")
	r.RetentionDays = intp("retention-days")
	r.KeepDaily, r.KeepWeekly = intp("keep-daily"), intp("keep-weekly")
	r.KeepMonthly, r.KeepYearly = intp("keep-monthly"), intp("keep-yearly")
	if c.Bool("disabled") {
		f := false
		r.Enabled = &f
	}
	return r
}

func policyCommand() *cli.Command {
	// update, enable and disable change a policy and show it.
	change := func(name, usage, done string, flags []cli.Flag, body func(c *cli.Context) api.PolicyRequest) *cli.Command {
		return verb[api.PolicyView]{
			Name: name, Usage: usage, Args: "POLICY", Flags: flags, JSON: true,
			Method: "PATCH", Path: apiPath("/v1/policies/", 0),
			Body:  func(c *cli.Context) (any, error) { return body(c), nil },
			Done:  func(_ *cli.Context, p api.PolicyView) string { return fmt.Sprintf(done, p.Name) },
			Print: printPolicy,
		}.command()
	}
	enabled := func(v bool) func(*cli.Context) api.PolicyRequest {
		return func(*cli.Context) api.PolicyRequest { return api.PolicyRequest{Enabled: &v} }
	}
	return &cli.Command{
		Name:  "policy",
		Usage: "manage backup policies",
		Subcommands: []*cli.Command{
			verb[api.PolicyView]{
				Name:  "create",
				Usage: "create a policy",
				Examples: `csbs policy create --name daily --time 02:00 --every-days 1 --max-backups 7
   csbs policy create --name twice --time 02:00 --time 14:00 --weekdays mon,thu --timezone Asia/Shanghai --retention-days 30`,
				Flags:    policyFlags(true),
				Required: []string{"name", "time"},
				JSON:     true,
				Method:   "POST", Path: apiPath("/v1/policies"),
				Body: func(c *cli.Context) (any, error) { return policyRequest(c), nil },
				Done: func(_ *cli.Context, p api.PolicyView) string {
					return fmt.Sprintf("created policy %s (%s)", p.Name, p.ID)
				},
				Print: printPolicy,
				Quiet: func(p api.PolicyView) string { return p.ID },
			}.command(),
			listing[api.PolicyView]{
				Paged:   true,
				Usage:   "list policies",
				Path:    apiPath("/v1/policies"),
				Columns: []string{"ID", "NAME", "STATUS", "SCHEDULE", "RETENTION", "SERVERS", "NEXT RUN"},
				Row: func(p api.PolicyView) []any {
					next := "-"
					if len(p.NextRuns) > 0 {
						next = policyTime(p.Policy, p.NextRuns[0])
					}
					return []any{p.ID, p.Name, status(p.Policy), schedule(p.Policy), retention(p.Policy), len(p.Servers), next}
				},
				Empty: "no policies (create one: csbs policy create --name NAME --time 02:00 --every-days 1 --max-backups 7)",
			}.command(),
			verb[api.PolicyView]{
				Name: "show", Usage: "show a policy with its next run times", Args: "POLICY", JSON: true,
				Flags: []cli.Flag{&cli.IntFlag{Name: "next", Usage: "show the next `N` runs", Value: api.DefaultNextRuns}},
				Path:  apiPath("/v1/policies/", 0),
				Query: func(c *cli.Context) url.Values { return url.Values{"next": {strconv.Itoa(c.Int("next"))}} },
				Print: printPolicy,
			}.command(),
			change("update", "change a policy (only the flags given)", "updated policy %s", policyFlags(false), policyRequest),
			change("enable", "enable a policy", "enabled policy %s", nil, enabled(true)),
			change("disable", "disable a policy (running jobs finish)", "disabled policy %s (running jobs finish; csbs policy run-now still works)", nil, enabled(false)),
			verb[struct{}]{
				Name: "rm", Usage: "remove a policy (its servers are unbound)", Args: "POLICY",
				Method: "DELETE", Path: apiPath("/v1/policies/", 0),
				Done: func(c *cli.Context, _ struct{}) string {
					return fmt.Sprintf("removed policy %s (its servers are unbound; their backups stay)", arg(c, 0))
				},
			}.command(),
			verb[api.ServerView]{
				Name: "bind", Usage: "bind a server to a policy", Args: "POLICY SERVER", JSON: true,
				Method: "POST", Path: apiPath("/v1/policies/", 0, "/bind"),
				Body: func(c *cli.Context) (any, error) { return api.BindRequest{Server: arg(c, 1)}, nil },
				Done: func(_ *cli.Context, s api.ServerView) string {
					return fmt.Sprintf("bound server %s to policy %s", s.Name, s.PolicyName)
				},
			}.command(),
			verb[api.ServerView]{
				Name: "unbind", Usage: "unbind a server from its policy", Args: "SERVER",
				Method: "POST", Path: apiPath("/v1/servers/", 0, "/unbind"),
				Done: func(_ *cli.Context, s api.ServerView) string {
					return fmt.Sprintf("unbound server %s from its policy (no automatic backups until it is bound again)", s.Name)
				},
			}.command(),
			verb[[]catalog.Job]{
				Name: "run-now", Usage: "run a policy now (automatic backups of every bound server)", Args: "POLICY", JSON: true,
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "wait for the backups"}},
				Method: "POST", Path: apiPath("/v1/policies/", 0, "/run-now"),
				Then: func(c *cli.Context, cl *api.Client, jobs []catalog.Job) ([]catalog.Job, error) {
					if !c.Bool("wait") {
						return jobs, nil
					}
					for i, j := range jobs {
						if !j.Finished() {
							var err error
							if jobs[i], err = waitJob(c, cl, j.ID); err != nil {
								return jobs, err
							}
						}
					}
					return jobs, nil
				},
				Done: func(c *cli.Context, jobs []catalog.Job) string {
					if c.Bool("wait") {
						return fmt.Sprintf("ran policy %s: %d backup job(s)", arg(c, 0), len(jobs))
					}
					return fmt.Sprintf("started policy %s: %d backup job(s) (follow them: csbs job wait JOB)", arg(c, 0), len(jobs))
				},
				Print: printJobs,
			}.command(),
			listing[scheduler.RetentionItem]{
				Name: "retention", Usage: "dry run: which backups the policy's retention would keep and delete now", Args: "POLICY",
				Method:  "POST",
				Path:    apiPath("/v1/policies/", 0, "/retention-preview"),
				Columns: []string{"BACKUP", "NAME", "CREATED", "VERDICT", "REASON"},
				Row: func(it scheduler.RetentionItem) []any {
					return []any{it.BackupID, it.Name, timeH(it.Created), it.Verdict, it.Reason}
				},
				Empty: "no backups under this policy yet",
			}.command(),
		},
	}
}

func status(p catalog.Policy) string {
	if p.Enabled {
		return "enabled"
	}
	return "disabled"
}

func schedule(p catalog.Policy) string {
	when := "every day"
	switch {
	case p.Period == catalog.PeriodWeekdays:
		when = strings.Join(p.Weekdays, ",")
	case p.EveryN > 1:
		when = fmt.Sprintf("every %d days", p.EveryN)
	}
	return fmt.Sprintf("%s at %s %s", when, strings.Join(p.Times, ","), p.Timezone)
}

func retention(p catalog.Policy) string {
	var s string
	switch {
	case p.MaxBackups > 0:
		s = fmt.Sprintf("keep %d", p.MaxBackups)
	case p.RetentionDays > 0:
		s = fmt.Sprintf("keep %d days", p.RetentionDays)
	default:
		s = "keep forever"
	}
	var lt []string
	for _, x := range []struct {
		n int
		u string
	}{{p.KeepDaily, "d"}, {p.KeepWeekly, "w"}, {p.KeepMonthly, "m"}, {p.KeepYearly, "y"}} {
		if x.n > 0 {
			lt = append(lt, fmt.Sprintf("%d%s", x.n, x.u))
		}
	}
	if len(lt) > 0 {
		s += " + long-term " + strings.Join(lt, " ")
	}
	return s
}

// policyTime is a run time in the policy's time zone, with the zone.
func policyTime(p catalog.Policy, t time.Time) string {
	return zoned(t, p.Timezone)
}

// zoned prints t in the IANA zone tz (UTC when empty or unknown), with
// the zone's abbreviation so that a reader never guesses.
func zoned(t time.Time, tz string) string {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		loc = time.UTC
	}
	return t.In(loc).Format("2006-01-02 15:04 MST")
}

func printPolicy(w io.Writer, p api.PolicyView) error {
	fmt.Fprintf(w, "id:        %s\nname:      %s\nstatus:    %s\nschedule:  %s\nretention: %s\nservers:   %s\n",
		p.ID, p.Name, status(p.Policy), schedule(p.Policy), retention(p.Policy), orDash(strings.Join(p.Servers, ", ")))
	return printNextRuns(w, p.NextRuns, p.Timezone, "POLICY TIME", "none (policy disabled)")
}

// printNextRuns lists a schedule's next runs in its time zone and the
// reader's, or says why there are none.
func printNextRuns(w io.Writer, runs []time.Time, tz, column, none string) error {
	if len(runs) == 0 {
		_, err := fmt.Fprintln(w, "next runs: "+none)
		return err
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		loc = time.UTC
	}
	fmt.Fprintln(w, "next runs:")
	t := newTable(w, "  #", column+" ("+tz+")", "YOUR TIME ("+time.Local.String()+")")
	for i, r := range runs {
		t.row(fmt.Sprintf("  %d", i+1), r.In(loc).Format("2006-01-02 15:04 MST Mon"), r.Local().Format("2006-01-02 15:04 MST Mon"))
	}
	return t.flush()
}
