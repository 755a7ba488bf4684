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
	return []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "policy `NAME` (1-255 of A-Z a-z 0-9 _ -)", Required: create},
		&cli.StringSliceFlag{Name: "time", Usage: "execution time `HH:MM` (repeat, at least 1 h apart)", Required: create},
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
		jsonFlag,
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
	refAction := func(method, suffix string, body func(c *cli.Context) any) cli.ActionFunc {
		return func(c *cli.Context) error {
			if err := needArgs(c, 1, "POLICY"); err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			var in any
			if body != nil {
				in = body(c)
			}
			var p api.PolicyView
			if err := cl.Do(c.Context, method, "/v1/policies/"+c.Args().First()+suffix, nil, in, &p); err != nil {
				return err
			}
			return show(c, p, func(w io.Writer) error { return printPolicy(w, p) })
		}
	}
	enabled := func(v bool) func(*cli.Context) any {
		return func(*cli.Context) any { return api.PolicyRequest{Enabled: &v} }
	}
	return &cli.Command{
		Name:  "policy",
		Usage: "manage backup policies",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "create a policy",
				UsageText: `csbs policy create --name daily --time 02:00 --every-days 1 --max-backups 7
   csbs policy create --name twice --time 02:00 --time 14:00 --weekdays mon,thu --timezone Asia/Shanghai --retention-days 30`,
				Flags: policyFlags(true),
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var p api.PolicyView
					if err := cl.Do(c.Context, "POST", "/v1/policies", nil, policyRequest(c), &p); err != nil {
						return err
					}
					return show(c, p, func(w io.Writer) error { return printPolicy(w, p) })
				},
			},
			{
				Name: "ls", Usage: "list policies", Flags: pageFlags(jsonFlag),
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ps []api.PolicyView
					if err := listPage(c, cl, "/v1/policies", nil, &ps); err != nil {
						return err
					}
					return show(c, ps, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "STATUS", "SCHEDULE", "RETENTION", "SERVERS", "NEXT RUN")
						for _, p := range ps {
							next := "-"
							if len(p.NextRuns) > 0 {
								next = timeH(p.NextRuns[0])
							}
							t.row(p.ID, p.Name, status(p.Policy), schedule(p.Policy), retention(p.Policy), len(p.Servers), next)
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a policy with its next run times", ArgsUsage: "POLICY",
				Flags: []cli.Flag{&cli.IntFlag{Name: "next", Usage: "show the next `N` runs", Value: 5}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "POLICY"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var p api.PolicyView
					q := url.Values{"next": {strconv.Itoa(c.Int("next"))}}
					if err := cl.Do(c.Context, "GET", "/v1/policies/"+c.Args().First(), q, nil, &p); err != nil {
						return err
					}
					return show(c, p, func(w io.Writer) error { return printPolicy(w, p) })
				},
			},
			{Name: "update", Usage: "change a policy (only the flags given)", ArgsUsage: "POLICY", Flags: policyFlags(false), Action: refAction("PATCH", "", func(c *cli.Context) any { return policyRequest(c) })},
			{Name: "enable", Usage: "enable a policy", ArgsUsage: "POLICY", Flags: []cli.Flag{jsonFlag}, Action: refAction("PATCH", "", enabled(true))},
			{Name: "disable", Usage: "disable a policy (running jobs finish)", ArgsUsage: "POLICY", Flags: []cli.Flag{jsonFlag}, Action: refAction("PATCH", "", enabled(false))},
			{
				Name: "rm", Usage: "remove a policy (its servers are unbound)", ArgsUsage: "POLICY",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "POLICY"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "DELETE", "/v1/policies/"+c.Args().First(), nil, nil, nil)
				},
			},
			{
				Name: "bind", Usage: "bind a server to a policy", ArgsUsage: "POLICY SERVER", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 2, "POLICY SERVER"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var s api.ServerView
					if err := cl.Do(c.Context, "POST", "/v1/policies/"+c.Args().Get(0)+"/bind", nil, api.BindRequest{Server: c.Args().Get(1)}, &s); err != nil {
						return err
					}
					return show(c, s, func(w io.Writer) error {
						_, err := fmt.Fprintf(w, "server %s bound to policy %s\n", s.Name, s.PolicyName)
						return err
					})
				},
			},
			{
				Name: "unbind", Usage: "unbind a server from its policy", ArgsUsage: "SERVER",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "SERVER"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "POST", "/v1/servers/"+c.Args().First()+"/unbind", nil, nil, nil)
				},
			},
			{
				Name: "run-now", Usage: "run a policy now (automatic backups of every bound server)", ArgsUsage: "POLICY",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "wait for the backups"}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "POLICY"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var jobs []catalog.Job
					if err := cl.Do(c.Context, "POST", "/v1/policies/"+c.Args().First()+"/run-now", nil, nil, &jobs); err != nil {
						return err
					}
					if c.Bool("wait") {
						for i, j := range jobs {
							if !j.Finished() {
								jobs[i], err = waitJob(c, cl, j.ID)
								if err != nil {
									return err
								}
							}
						}
					}
					return show(c, jobs, func(w io.Writer) error { return printJobs(w, jobs) })
				},
			},
			{
				Name: "retention", Usage: "dry run: which backups the policy's retention would keep and delete now", ArgsUsage: "POLICY", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "POLICY"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var items []scheduler.RetentionItem
					if err := cl.Do(c.Context, "POST", "/v1/policies/"+c.Args().First()+"/retention-preview", nil, nil, &items); err != nil {
						return err
					}
					return show(c, items, func(w io.Writer) error {
						t := newTable(w, "BACKUP", "NAME", "CREATED", "VERDICT", "REASON")
						for _, it := range items {
							t.row(it.BackupID, it.Name, timeH(it.Created), it.Verdict, it.Reason)
						}
						return t.flush()
					})
				},
			},
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

func printPolicy(w io.Writer, p api.PolicyView) error {
	fmt.Fprintf(w, "id:        %s\nname:      %s\nstatus:    %s\nschedule:  %s\nretention: %s\nservers:   %s\n",
		p.ID, p.Name, status(p.Policy), schedule(p.Policy), retention(p.Policy), orDash(strings.Join(p.Servers, ", ")))
	if len(p.NextRuns) == 0 {
		_, err := fmt.Fprintln(w, "next runs: none (policy disabled)")
		return err
	}
	loc, err := time.LoadLocation(p.Timezone)
	if err != nil {
		loc = time.UTC
	}
	fmt.Fprintln(w, "next runs:")
	t := newTable(w, "  #", "POLICY TIME ("+p.Timezone+")", "YOUR TIME ("+time.Local.String()+")")
	for i, r := range p.NextRuns {
		t.row(fmt.Sprintf("  %d", i+1), r.In(loc).Format("2006-01-02 15:04 MST Mon"), r.Local().Format("2006-01-02 15:04 MST Mon"))
	}
	return t.flush()
}
