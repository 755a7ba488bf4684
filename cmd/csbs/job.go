package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"csbs/catalog"
)

func jobCommand() *cli.Command {
	one := func(method, suffix string) cli.ActionFunc {
		return func(c *cli.Context) error {
			if err := needArgs(c, 1, "JOB"); err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			var j catalog.Job
			if err := cl.Do(c.Context, method, "/v1/jobs/"+c.Args().First()+suffix, nil, nil, &j); err != nil {
				return err
			}
			return show(c, j, func(w io.Writer) error { return printJob(w, j) })
		}
	}
	return &cli.Command{
		Name:  "job",
		Usage: "follow jobs (backups, restores, retention, gc, scrub)",
		Subcommands: []*cli.Command{
			{
				Name: "ls", Usage: "list jobs, newest first", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var js []catalog.Job
					if err := cl.Do(c.Context, "GET", "/v1/jobs", nil, nil, &js); err != nil {
						return err
					}
					return show(c, js, func(w io.Writer) error { return printJobs(w, js) })
				},
			},
			{Name: "show", Usage: "show a job", ArgsUsage: "JOB", Flags: []cli.Flag{jsonFlag}, Action: one("GET", "")},
			{
				Name: "wait", Usage: "wait for a job to end, showing progress", ArgsUsage: "JOB", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "JOB"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					j, err := waitJob(c, cl, c.Args().First())
					if err != nil {
						return err
					}
					return show(c, j, func(w io.Writer) error { return printJob(w, j) })
				},
			},
			{Name: "cancel", Usage: "cancel a queued or running job", ArgsUsage: "JOB", Flags: []cli.Flag{jsonFlag}, Action: one("POST", "/cancel")},
		},
	}
}

func printJobs(w io.Writer, js []catalog.Job) error {
	t := newTable(w, "ID", "KIND", "STATE", "PROGRESS", "CREATED", "ENDED", "RESULT")
	for _, j := range js {
		result := j.BackupName
		if j.Error != "" {
			result = j.Error
		} else if j.Note != "" {
			result = joinNonEmpty(result, j.Note)
		}
		t.row(j.ID, j.Kind, j.State, pct(j.Done, j.Total), timeH(j.Created), timeH(j.Ended), orDash(result))
	}
	return t.flush()
}

func joinNonEmpty(a, b string) string {
	if a == "" {
		return b
	}
	return a + ": " + b
}

func printJob(w io.Writer, j catalog.Job) error {
	fmt.Fprintf(w, "id:       %s\nkind:     %s\nstate:    %s\nprogress: %s of %s (%s)\ncreated:  %s\nstarted:  %s\nended:    %s\n",
		j.ID, j.Kind, j.State, bytesH(j.Done), bytesH(j.Total), pct(j.Done, j.Total), timeH(j.Created), timeH(j.Started), timeH(j.Ended))
	if io := j.StoreIO; io != nil {
		fmt.Fprintf(w, "store io: %d PUTs (%s), %d GETs (%s)\n", io.Puts, bytesH(io.PutBytes), io.Gets, bytesH(io.GetBytes))
	}
	if j.BackupID != "" {
		fmt.Fprintf(w, "backup:   %s %s\n", j.BackupID, j.BackupName)
	}
	if j.Note != "" {
		fmt.Fprintf(w, "note:     %s\n", j.Note)
	}
	if j.Error != "" {
		fmt.Fprintf(w, "error:    %s\n", j.Error)
	}
	return nil
}
