package main

import (
	"fmt"
	"io"
	"net/url"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
	"csbs/replication"
)

// The backup commands of replication: backup replicate, and the --remote
// forms of backup ls and show, which list a remote's backups with their
// replication state here.

func remoteFlag(usage string) cli.Flag { return &cli.StringFlag{Name: "remote", Usage: usage} }

// withRemote runs remote instead of local when --remote is given.
func withRemote(local, remote *cli.Command) *cli.Command {
	act := local.Action
	local.Action = func(c *cli.Context) error {
		if c.String("remote") != "" {
			return remote.Action(c)
		}
		return act(c)
	}
	return local
}

func remotePath(parts ...any) func(c *cli.Context) string {
	return func(c *cli.Context) string {
		return "/v1/remotes/" + url.PathEscape(c.String("remote")) + apiPath(parts...)(c)
	}
}

func remoteBackupsCommand() *cli.Command {
	return listing[replication.RemoteBackup]{
		Path:    remotePath("/backups"),
		Query:   queryOf("server", "type"),
		Columns: []string{"ID", "NAME", "SERVER", "TYPE", "STATUS", "CREATED", "SIZE", "REPLICATION", "REPLICA"},
		Row: func(b replication.RemoteBackup) []any {
			st := b.Status
			if b.Damaged {
				st += ",damaged"
			}
			if b.Replica {
				st += ",replica"
			}
			return []any{b.ID, b.Name, b.ServerName, b.Type, st, timeH(b.Created), bytesH(b.Size), replicationStateH(b.Replication), orDash(b.Replication.ReplicaName)}
		},
		Empty: "the remote has no backups in the project its token reads",
	}.command()
}

func remoteBackupCommand() *cli.Command {
	return verb[replication.RemoteBackup]{
		Args: "BACKUP", Path: remotePath("/backups/", 0),
		Print: printRemoteBackup,
	}.command()
}

// backupReplicateCommand queues the replication of a remote's backup
// and, with --wait, follows it and shows the replica.
func backupReplicateCommand() *cli.Command {
	return &cli.Command{
		Name:  "replicate",
		Usage: "copy a backup of a remote appliance here (only the blocks this store lacks cross the wire)",
		UsageText: `csbs backup replicate golden --remote dc1 --wait
   csbs backup ls --remote dc1     # the remote's backups and their replication state here`,
		ArgsUsage: "BACKUP",
		Flags: []cli.Flag{
			remoteFlag("the `REMOTE` that has the backup (BACKUP is its id or name there)"),
			&cli.StringFlag{Name: "rate", Usage: "limit the transfer to `RATE` on the wire, e.g. 50MiB/s (default: unlimited)"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the replica and show progress"},
			quietFlag("print only the job id (with --wait: the replica's id)"),
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "BACKUP --remote REMOTE"); err != nil {
				return err
			}
			if err := needFlags(c, "remote"); err != nil {
				return err
			}
			rate, err := parseRateFlag(c)
			if err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			j, err := call[catalog.Job](c, cl, "POST", remotePath("/backups/", 0, "/replicate")(c), nil, api.ReplicateRequest{Rate: rate})
			if err != nil {
				return err
			}
			if !c.Bool("wait") {
				return emit(c, j, fmt.Sprintf("queued replication job %s of backup %s of remote %s (follow it: csbs job wait %s)", j.ID, arg(c, 0), c.String("remote"), j.ID), jobID, nil)
			}
			if j, err = waitJob(c, cl, j.ID); err != nil {
				return err
			}
			b, err := call[api.BackupView](c, cl, "GET", "/v1/backups/"+url.PathEscape(j.BackupID), nil, nil)
			if err != nil {
				return err
			}
			return emit(c, b, fmt.Sprintf("replicated %s backup %s of remote %s: %s", b.Type, b.Name, c.String("remote"), j.Note),
				func(b api.BackupView) string { return b.ID }, printBackup)
		},
	}
}

// replicationStateH is a remote backup's replication state in a word or
// a line: none, running, ok, failed: reason.
func replicationStateH(r replication.ReplicationState) string {
	switch {
	case r.State == catalog.ReplicaFailed:
		return "failed: " + r.Error
	case r.State == catalog.ReplicaOK && r.ReplicaName == "":
		return "ok (replica deleted here)"
	case r.State == catalog.ReplicaNone && !r.Qualifies:
		return "none (does not qualify)"
	}
	return r.State
}

func printRemoteBackup(w io.Writer, b replication.RemoteBackup) error {
	fmt.Fprintf(w, "id:          %s (on the remote)\nname:        %s\nserver:      %s (%s)\nstatus:      %s\ntype:        %s\n", b.ID, b.Name, b.ServerName, b.ServerID, b.Status, b.Type)
	fmt.Fprintf(w, "created:     %s\nregion:      %s\nsize:        %s\n", timeH(b.Created), b.Region, bytesH(b.Size))
	r := b.Replication
	fmt.Fprintf(w, "replication: %s\n", replicationStateH(r))
	if !r.Qualifies {
		fmt.Fprintf(w, "why not:     %s\n", r.Why)
	}
	if r.ReplicaID != "" {
		fmt.Fprintf(w, "replica:     %s (%s)\n", orDash(r.ReplicaName), r.ReplicaID)
	}
	if r.JobID != "" {
		fmt.Fprintf(w, "last job:    %s: %d blocks fetched, %d already here, %s on the wire\n", r.JobID, r.BlocksFetched, r.BlocksSkipped, bytesH(r.WireBytes))
	}
	t := newTable(w, "DISK", "SIZE", "DATA BLOCKS")
	for _, d := range b.Disks {
		t.row(d.Name, bytesH(d.Size), d.Blocks)
	}
	return t.flush()
}
