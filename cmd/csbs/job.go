package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"csbs/catalog"
)

func jobCommand() *cli.Command {
	return &cli.Command{
		Name:  "job",
		Usage: "follow jobs (backups, restores, instant-restore hydration, retention, gc, scrub)",
		Subcommands: []*cli.Command{
			listing[catalog.Job]{
				Paged: true,
				Usage: "list jobs, newest first",
				Path:  apiPath("/v1/jobs"),
				// printJobs is also run-now's answer.
				Columns: jobColumns, Row: jobRow,
				Empty: "no jobs yet (backups, restores, gc and scrub run as jobs)",
			}.command(),
			verb[catalog.Job]{
				Name: "show", Usage: "show a job", Args: "JOB", JSON: true,
				Path:  apiPath("/v1/jobs/", 0),
				Print: printJob,
			}.command(),
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
					j, err := waitJob(c, cl, arg(c, 0))
					if err != nil {
						return err
					}
					return emit(c, j, "", nil, printJob)
				},
			},
			verb[catalog.Job]{
				Name: "cancel", Usage: "cancel a queued or running job", Args: "JOB", JSON: true,
				Method: "POST", Path: apiPath("/v1/jobs/", 0, "/cancel"),
				Done: func(_ *cli.Context, j catalog.Job) string {
					return fmt.Sprintf("%s job %s is %s", j.Kind, j.ID, j.State)
				},
				Print: printJob,
			}.command(),
		},
	}
}

var jobColumns = []string{"ID", "KIND", "STATE", "PROGRESS", "CREATED", "ENDED", "RESULT"}

func jobRow(j catalog.Job) []any {
	result := j.BackupName
	if j.Error != "" {
		result = j.Error
	} else if j.Note != "" {
		result = joinNonEmpty(result, j.Note)
	}
	return []any{j.ID, j.Kind, j.State, pct(j.Done, j.Total), timeH(j.Created), timeH(j.Ended), orDash(result)}
}

func printJobs(w io.Writer, js []catalog.Job) error {
	return tableOf(jobColumns, jobRow, "")(w, js)
}

// jobID is what --quiet prints of a job.
func jobID(j catalog.Job) string { return j.ID }

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
	if r := j.Replicate; r != nil {
		what := "backup " + r.SourceBackupName
		if r.ReplicationID != "" {
			what = "replication " + r.ReplicationID
		}
		fmt.Fprintf(w, "from:     remote %s, %s\nblocks:   %d with data, %d fetched, %d already here; %s on the wire\n",
			r.RemoteName, what, r.DataBlocks, r.BlocksFetched, r.BlocksSkipped, bytesH(r.WireBytes))
	}
	if j.BackupID != "" {
		fmt.Fprintf(w, "backup:   %s %s\n", j.BackupID, j.BackupName)
	}
	if j.RestoreID != "" {
		fmt.Fprintf(w, "restore:  %s\n", j.RestoreID)
	}
	if j.Note != "" {
		fmt.Fprintf(w, "note:     %s\n", j.Note)
	}
	if j.Error != "" {
		fmt.Fprintf(w, "error:    %s\n", j.Error)
	}
	return nil
}
