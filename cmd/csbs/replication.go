package main

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"

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
			verb[api.ReplicationView]{
				Name:  "create",
				Usage: "create a replication policy",
				Examples: `csbs replication create --name dr --remote dc1 --time 03:00
   csbs replication create --name web-dr --remote dc1 --server web1 --last 3 --time 01:00 --time 13:00 --rate 50MiB/s
   csbs replication create --name dr7 --remote dc1 --last 1 --keep 7 --time 02:00`,
				JSON: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "policy `NAME` (1-255 of A-Z a-z 0-9 _ -)"},
					&cli.StringFlag{Name: "remote", Usage: "the `REMOTE` to pull from (csbs remote add)"},
					&cli.StringFlag{Name: "server", Usage: "only backups of the remote's server `S` (name or id; default: every server)"},
					&cli.IntFlag{Name: "last", Usage: "replicate the newest `N` qualifying backups of each server", Value: 1},
					&cli.IntFlag{Name: "keep", Usage: "keep the newest `N` replicas of each server here, deleting older ones after each run (default 0: keep every replica)"},
					&cli.StringSliceFlag{Name: "time", Usage: "run at `HH:MM` (repeat, at least 1 h apart)"},
					&cli.IntFlag{Name: "every-days", Usage: "run every `N` days (default: every day)"},
					&cli.StringFlag{Name: "weekdays", Usage: "run on `DAYS`, e.g. mon,thu"},
					&cli.StringFlag{Name: "timezone", Usage: "IANA `ZONE` of the times (default UTC)"},
					&cli.StringFlag{Name: "rate", Usage: "limit the transfer to `RATE` on the wire, e.g. 50MiB/s (default: unlimited)"},
					&cli.BoolFlag{Name: "disabled", Usage: "create it disabled (runs only with run-now)"},
					quietFlag("print only the policy's id"),
				},
				Required: []string{"name", "remote", "time"},
				Method:   "POST", Path: apiPath("/v1/replications"),
				Body: func(c *cli.Context) (any, error) {
					rate, err := parseRateFlag(c)
					if err != nil {
						return nil, err
					}
					req := api.ReplicationRequest{
						Name: c.String("name"), Remote: c.String("remote"), Server: c.String("server"), Last: c.Int("last"), Keep: c.Int("keep"),
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
					return req, nil
				},
				Done: func(_ *cli.Context, r api.ReplicationView) string {
					return fmt.Sprintf("created replication %s (%s) from remote %s", r.Name, r.ID, r.RemoteName)
				},
				Print: printReplication,
				Quiet: func(r api.ReplicationView) string { return r.ID },
			}.command(),
			listing[api.ReplicationView]{
				Usage:   "list replication policies",
				Path:    apiPath("/v1/replications"),
				Columns: []string{"ID", "NAME", "REMOTE", "SERVERS", "LAST", "SCHEDULE", "NEXT RUN", "LAST RUN"},
				Row: func(r api.ReplicationView) []any {
					next := "-"
					if len(r.NextRuns) > 0 {
						next = timeH(r.NextRuns[0])
					}
					return []any{r.ID, r.Name, r.RemoteName, orDash(r.Server), r.Last, replicationSchedule(r.Replication), next, lastRun(r.LastJob)}
				},
				Empty: "no replication policies (create one: csbs replication create --name N --remote R --time HH:MM)",
			}.command(),
			verb[api.ReplicationView]{
				Name: "show", Usage: "show a replication policy, its next runs and its last run", Args: "NAME", JSON: true,
				Flags: []cli.Flag{&cli.IntFlag{Name: "next", Usage: "show the next `N` runs", Value: 5}},
				Path:  apiPath("/v1/replications/", 0),
				Query: func(c *cli.Context) url.Values { return url.Values{"next": {strconv.Itoa(c.Int("next"))}} },
				Print: printReplication,
			}.command(),
			verb[struct{}]{
				Name: "rm", Usage: "remove a replication policy (its replicas stay)", Args: "NAME",
				Method: "DELETE", Path: apiPath("/v1/replications/", 0),
				Done: func(c *cli.Context, _ struct{}) string {
					return fmt.Sprintf("removed replication %s (its replicas stay)", arg(c, 0))
				},
			}.command(),
			verb[catalog.Job]{
				Name: "run-now", Usage: "run a replication policy now", Args: "NAME", JSON: true,
				Examples: "csbs replication run-now dr --wait",
				Flags:    []cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "wait for the run and show progress"}, quietFlag("print only the job id")},
				Method:   "POST", Path: apiPath("/v1/replications/", 0, "/run-now"),
				Then: func(c *cli.Context, cl *api.Client, j catalog.Job) (catalog.Job, error) {
					if !c.Bool("wait") {
						return j, nil
					}
					return waitJob(c, cl, j.ID)
				},
				Done: func(c *cli.Context, j catalog.Job) string {
					if j.Finished() {
						return fmt.Sprintf("ran replication %s: job %s %s", arg(c, 0), j.ID, j.State)
					}
					return fmt.Sprintf("started replication %s: job %s (follow it: csbs job wait %s)", arg(c, 0), j.ID, j.ID)
				},
				Print: printReplicateJob,
				Quiet: jobID,
			}.command(),
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
	if r.Keep > 0 {
		fmt.Fprintf(w, "keeps:     the newest %d replicas of each server (older ones are deleted after each run)\n", r.Keep)
	} else {
		fmt.Fprintln(w, "keeps:     every replica, until deleted by hand")
	}
	if r.LastJob != nil {
		fmt.Fprintf(w, "last run:  %s, job %s", lastRun(r.LastJob), r.LastJob.ID)
		if r.LastJob.Error != "" {
			fmt.Fprintf(w, ": %s", r.LastJob.Error)
		} else if r.LastJob.Note != "" {
			fmt.Fprintf(w, ": %s", r.LastJob.Note)
		}
		fmt.Fprintln(w)
	}
	return printNextRuns(w, r.NextRuns, r.Timezone, "TIME", "none (disabled: run it with csbs replication run-now)")
}

func printReplicateJob(w io.Writer, j catalog.Job) error {
	if j.Error != "" {
		fmt.Fprintf(w, "error: %s\n", j.Error)
	}
	if j.Note != "" {
		fmt.Fprintln(w, j.Note)
	}
	return nil
}
