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
	"csbs/config"
)

// parseRateFlag reads a --rate like 50MiB/s; 0 or absent = unlimited.
func parseRateFlag(c *cli.Context) (int64, error) {
	v := c.String("rate")
	if v == "" {
		return 0, nil
	}
	r, err := config.ParseRate(v)
	if err != nil {
		return 0, cli.Exit("--rate: "+err.Error(), 2)
	}
	return r, nil
}

func replicationCommand() *cli.Command {
	return &cli.Command{
		Name:  "replication",
		Usage: "replication policies: pull a remote's newest backups on a schedule",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "create a replication policy",
				UsageText: `csbs replication create --name dr --remote dc1 --time 03:00
   csbs replication create --name web-dr --remote dc1 --server web1 --last 3 --time 01:00 --time 13:00 --rate 50MiB/s`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "policy `NAME` (1-255 of A-Z a-z 0-9 _ -)", Required: true},
					&cli.StringFlag{Name: "remote", Usage: "the `REMOTE` to pull from (csbs remote add)", Required: true},
					&cli.StringFlag{Name: "server", Usage: "only backups of the remote's server `S` (name or id; default: every server)"},
					&cli.IntFlag{Name: "last", Usage: "replicate the newest `N` qualifying backups of each server", Value: 1},
					&cli.StringSliceFlag{Name: "time", Usage: "run at `HH:MM` (repeat, at least 1 h apart)", Required: true},
					&cli.IntFlag{Name: "every-days", Usage: "run every `N` days (default: every day)"},
					&cli.StringFlag{Name: "weekdays", Usage: "run on `DAYS`, e.g. mon,thu"},
					&cli.StringFlag{Name: "timezone", Usage: "IANA `ZONE` of the times (default UTC)"},
					&cli.StringFlag{Name: "rate", Usage: "limit the transfer to `RATE` on the wire, e.g. 50MiB/s (default: unlimited)"},
					&cli.BoolFlag{Name: "disabled", Usage: "create it disabled (runs only with run-now)"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					rate, err := parseRateFlag(c)
					if err != nil {
						return err
					}
					req := api.ReplicationRequest{
						Name: c.String("name"), Remote: c.String("remote"), Server: c.String("server"), Last: c.Int("last"),
						Times: c.StringSlice("time"), Timezone: c.String("timezone"), Rate: rate,
					}
					if c.IsSet("every-days") {
						n := c.Int("every-days")
						req.EveryDays = &n
					}
					if c.IsSet("weekdays") {
						req.Weekdays = strings.Split(c.String("weekdays"), ",")
					}
					if c.Bool("disabled") {
						f := false
						req.Enabled = &f
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var r api.ReplicationView
					if err := cl.Do(c.Context, "POST", "/v1/replications", nil, req, &r); err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) error { return printReplication(w, r) })
				},
			},
			{
				Name: "ls", Usage: "list replication policies", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var rs []api.ReplicationView
					if err := cl.Do(c.Context, "GET", "/v1/replications", nil, nil, &rs); err != nil {
						return err
					}
					return show(c, rs, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "REMOTE", "SERVERS", "LAST", "SCHEDULE", "NEXT RUN", "LAST RUN")
						for _, r := range rs {
							next := "-"
							if len(r.NextRuns) > 0 {
								next = timeH(r.NextRuns[0])
							}
							t.row(r.ID, r.Name, r.RemoteName, orDash(r.Server), r.Last, replicationSchedule(r.Replication), next, lastRun(r.LastJob))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a replication policy, its next runs and its last run", ArgsUsage: "NAME",
				Flags: []cli.Flag{&cli.IntFlag{Name: "next", Usage: "show the next `N` runs", Value: 5}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var r api.ReplicationView
					q := url.Values{"next": {strconv.Itoa(c.Int("next"))}}
					if err := cl.Do(c.Context, "GET", "/v1/replications/"+url.PathEscape(c.Args().First()), q, nil, &r); err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) error { return printReplication(w, r) })
				},
			},
			{
				Name: "rm", Usage: "remove a replication policy (its replicas stay)", ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "DELETE", "/v1/replications/"+url.PathEscape(c.Args().First()), nil, nil, nil)
				},
			},
			{
				Name: "run-now", Usage: "run a replication policy now", ArgsUsage: "NAME",
				UsageText: "csbs replication run-now dr --wait",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "wait for the run and show progress"}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var j catalog.Job
					if err := cl.Do(c.Context, "POST", "/v1/replications/"+url.PathEscape(c.Args().First())+"/run-now", nil, nil, &j); err != nil {
						return err
					}
					if c.Bool("wait") {
						if j, err = waitJob(c, cl, j.ID); err != nil {
							return err
						}
					}
					return show(c, j, func(w io.Writer) error { return printReplicateJob(w, j) })
				},
			},
		},
	}
}

func replicationSchedule(r catalog.Replication) string {
	s := schedule(r.Schedule())
	if r.Rate > 0 {
		s += ", at most " + bytesH(r.Rate) + "/s"
	}
	if !r.Enabled {
		s += " (disabled)"
	}
	return s
}

func lastRun(j *catalog.Job) string {
	if j == nil {
		return "-"
	}
	if j.Finished() {
		return j.State + " " + timeH(j.Ended)
	}
	return j.State + " (" + j.ID + ")"
}

func printReplication(w io.Writer, r api.ReplicationView) error {
	servers := "every server"
	if r.Server != "" {
		servers = "server " + r.Server
	}
	fmt.Fprintf(w, "id:        %s\nname:      %s\nremote:    %s\nbackups:   the newest %d qualifying of %s\nschedule:  %s\n",
		r.ID, r.Name, r.RemoteName, r.Last, servers, replicationSchedule(r.Replication))
	if r.LastJob != nil {
		fmt.Fprintf(w, "last run:  %s, job %s", lastRun(r.LastJob), r.LastJob.ID)
		if r.LastJob.Error != "" {
			fmt.Fprintf(w, ": %s", r.LastJob.Error)
		} else if r.LastJob.Note != "" {
			fmt.Fprintf(w, ": %s", r.LastJob.Note)
		}
		fmt.Fprintln(w)
	}
	if len(r.NextRuns) == 0 {
		_, err := fmt.Fprintln(w, "next runs: none (disabled: run it with csbs replication run-now)")
		return err
	}
	loc, err := time.LoadLocation(r.Timezone)
	if err != nil {
		loc = time.UTC
	}
	fmt.Fprintln(w, "next runs:")
	t := newTable(w, "  #", "TIME ("+r.Timezone+")", "YOUR TIME ("+time.Local.String()+")")
	for i, x := range r.NextRuns {
		t.row(fmt.Sprintf("  %d", i+1), x.In(loc).Format("2006-01-02 15:04 MST Mon"), x.Local().Format("2006-01-02 15:04 MST Mon"))
	}
	return t.flush()
}

func printReplicateJob(w io.Writer, j catalog.Job) error {
	fmt.Fprintf(w, "job %s: %s", j.ID, j.State)
	if j.Error != "" {
		fmt.Fprintf(w, ": %s", j.Error)
	}
	fmt.Fprintln(w)
	if j.Note != "" {
		fmt.Fprintln(w, j.Note)
	}
	if !j.Finished() {
		fmt.Fprintf(w, "follow it: csbs job wait %s\n", j.ID)
	}
	return nil
}
