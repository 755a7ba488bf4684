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

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "create, list, show and delete backups",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "back up all disks of a server now (a manual backup)",
				UsageText: `csbs backup create web1 --wait
   csbs backup create web1 --full --enable-instant-restore --name before-upgrade --wait`,
				ArgsUsage: "SERVER",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "backup `NAME` (default manualbk_xxxx)"},
					&cli.BoolFlag{Name: "full", Usage: "full backup: read every disk whole (with IR enabled: an Enhanced backup)"},
					&cli.BoolFlag{Name: "enable-instant-restore", Usage: "with --full: enable Instant Restore for the project; the backup is Enhanced"},
					&cli.BoolFlag{Name: "wait", Usage: "wait for the backup and show progress"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "SERVER"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					req := api.CreateBackupRequest{Server: c.Args().First(), Name: c.String("name"), Full: c.Bool("full"), EnableIR: c.Bool("enable-instant-restore")}
					var j catalog.Job
					if err := cl.Do(c.Context, "POST", "/v1/backups", nil, req, &j); err != nil {
						return err
					}
					if !c.Bool("wait") {
						return show(c, j, func(w io.Writer) error {
							_, err := fmt.Fprintf(w, "backup job %s queued (follow it: csbs job wait %s)\n", j.ID, j.ID)
							return err
						})
					}
					if j, err = waitJob(c, cl, j.ID); err != nil {
						return err
					}
					var b api.BackupView
					if err := cl.Do(c.Context, "GET", "/v1/backups/"+j.BackupID, nil, nil, &b); err != nil {
						return err
					}
					return show(c, b, func(w io.Writer) error { return printBackup(w, b) })
				},
			},
			{
				Name: "ls", Usage: "list backups, newest first (--remote R: the remote's, with their replication state here)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "server", Usage: "only backups of `SERVER`"},
					&cli.StringFlag{Name: "type", Usage: "only `TYPE` common or enhanced"},
					&cli.StringFlag{Name: "remote", Usage: "list the backups of `REMOTE` and whether they are replicated here"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					if r := c.String("remote"); r != "" {
						return remoteBackupsAction(c, cl, r)
					}
					q := url.Values{}
					if v := c.String("server"); v != "" {
						q.Set("server", v)
					}
					if v := c.String("type"); v != "" {
						q.Set("type", v)
					}
					var bs []api.BackupView
					if err := cl.Do(c.Context, "GET", "/v1/backups", q, nil, &bs); err != nil {
						return err
					}
					return show(c, bs, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "SERVER", "TYPE", "STATUS", "TRIGGER", "CREATED", "SIZE", "NEW")
						for _, b := range bs {
							var added int64
							for _, d := range b.Disks {
								added += d.NewBytes
							}
							st := b.Status
							if b.Damaged {
								st += ",damaged"
							}
							if b.Protected {
								st += ",protected"
							}
							if b.Replica != nil {
								st += ",replica"
							}
							t.row(b.ID, b.Name, b.ServerName, b.Type, st, b.Trigger, timeH(b.Created), bytesH(b.Size), bytesH(added))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a backup, its type and why (--remote R: a backup of the remote, with its replication state here)", ArgsUsage: "BACKUP",
				Flags: []cli.Flag{&cli.StringFlag{Name: "remote", Usage: "BACKUP is a backup of `REMOTE`"}, jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					if r := c.String("remote"); r != "" {
						var b replication.RemoteBackup
						if err := cl.Do(c.Context, "GET", "/v1/remotes/"+url.PathEscape(r)+"/backups/"+url.PathEscape(c.Args().First()), nil, nil, &b); err != nil {
							return err
						}
						return show(c, b, func(w io.Writer) error { return printRemoteBackup(w, r, b) })
					}
					var b api.BackupView
					if err := cl.Do(c.Context, "GET", "/v1/backups/"+c.Args().First(), nil, nil, &b); err != nil {
						return err
					}
					return show(c, b, func(w io.Writer) error { return printBackup(w, b) })
				},
			},
			{
				Name: "rm", Usage: "delete a backup (space returns with csbs gc)", ArgsUsage: "BACKUP",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "also delete a protected backup"}},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					q := url.Values{}
					if c.Bool("force") {
						q.Set("force", "true")
					}
					return cl.Do(c.Context, "DELETE", "/v1/backups/"+c.Args().First(), q, nil, nil)
				},
			},
			{
				Name:      "attach",
				Usage:     "export an Enhanced backup's disks read-only over NBD",
				UsageText: "csbs backup attach golden --disk vda\n   nbdinfo \"$(csbs backup attach golden --disk vda --quiet)\"",
				ArgsUsage: "BACKUP",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "only `DISK` (default: every disk)"}, quietFlag("print only the NBD URIs, one per line"), jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var es []api.ExportInfo
					if err := cl.Do(c.Context, "POST", "/v1/backups/"+c.Args().First()+"/attach", nil, api.AttachRequest{Disk: c.String("disk")}, &es); err != nil {
						return err
					}
					if c.Bool("quiet") {
						for _, e := range es {
							fmt.Fprintln(c.App.Writer, e.URI)
						}
						return nil
					}
					return show(c, es, func(w io.Writer) error { return printExports(w, es) })
				},
			},
			{
				Name: "detach", Usage: "remove a backup's NBD exports", ArgsUsage: "BACKUP",
				Flags: []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "only `DISK` (default: every attached disk)"}},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "POST", "/v1/backups/"+c.Args().First()+"/detach", nil, api.AttachRequest{Disk: c.String("disk")}, nil)
				},
			},
			backupReplicateCommand(),
			browseCommands()[0],
			browseCommands()[1],
			{
				Name: "protect", Usage: "protect a backup from retention and plain deletion", ArgsUsage: "BACKUP",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "off", Usage: "remove the protection"}},
				Action: protectAction,
			},
		},
	}
}

func protectAction(c *cli.Context) error {
	if err := needArgs(c, 1, "BACKUP"); err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	on := !c.Bool("off")
	return cl.Do(c.Context, "PATCH", "/v1/backups/"+c.Args().First(), nil, api.UpdateBackupRequest{Protected: &on}, nil)
}

func printBackup(w io.Writer, b api.BackupView) error {
	status := b.Status
	if b.Damaged {
		status += ", DAMAGED"
	}
	fmt.Fprintf(w, "id:        %s\nname:      %s\nserver:    %s (%s)\nstatus:    %s\n", b.ID, b.Name, b.ServerName, b.ServerID, status)
	if b.Damaged {
		fmt.Fprintf(w, "damage:    %s\n", b.Damage)
	}
	fmt.Fprintf(w, "type:      %s\n", b.Type)
	fmt.Fprintf(w, "why:       %s\n", b.TypeReason)
	fmt.Fprintf(w, "trigger:   %s\ncreated:   %s\nsize:      %s\nprotected: %v\nin use:    %v\n", b.Trigger, timeH(b.Created), bytesH(b.Size), b.Protected, b.InUse)
	fmt.Fprintf(w, "region:    %s\n", b.Region)
	if o := b.Replica; o != nil {
		fmt.Fprintf(w, "replica:   of backup %s on remote %s (project %s there), replicated %s; replication: ok\n", o.SourceBackupID, o.RemoteName, o.SourceProject, timeH(o.Replicated))
	}
	t := newTable(w, "DISK", "SIZE", "DATA BLOCKS", "NEW BYTES", "MAP")
	for _, d := range b.Disks {
		t.row(d.Name, bytesH(d.Size), d.Blocks, bytesH(d.NewBytes), d.MapID)
	}
	return t.flush()
}

func backupReplicateCommand() *cli.Command {
	return &cli.Command{
		Name:  "replicate",
		Usage: "copy a backup of a remote appliance here (only the blocks this store lacks cross the wire)",
		UsageText: `csbs backup replicate golden --remote dc1 --wait
   csbs backup ls --remote dc1     # the remote's backups and their replication state here`,
		ArgsUsage: "BACKUP",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "remote", Usage: "the `REMOTE` that has the backup (BACKUP is its id or name there)", Required: true},
			&cli.StringFlag{Name: "rate", Usage: "limit the transfer to `RATE` on the wire, e.g. 50MiB/s (default: unlimited)"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the replica and show progress"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "BACKUP --remote REMOTE"); err != nil {
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
			path := "/v1/remotes/" + url.PathEscape(c.String("remote")) + "/backups/" + url.PathEscape(c.Args().First()) + "/replicate"
			var j catalog.Job
			if err := cl.Do(c.Context, "POST", path, nil, api.ReplicateRequest{Rate: rate}, &j); err != nil {
				return err
			}
			if !c.Bool("wait") {
				return show(c, j, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "replication job %s queued (follow it: csbs job wait %s)\n", j.ID, j.ID)
					return err
				})
			}
			if j, err = waitJob(c, cl, j.ID); err != nil {
				return err
			}
			var b api.BackupView
			if err := cl.Do(c.Context, "GET", "/v1/backups/"+j.BackupID, nil, nil, &b); err != nil {
				return err
			}
			return show(c, b, func(w io.Writer) error {
				if err := printBackup(w, b); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, j.Note)
				return err
			})
		},
	}
}

func remoteBackupsAction(c *cli.Context, cl *api.Client, remote string) error {
	q := url.Values{}
	if v := c.String("server"); v != "" {
		q.Set("server", v)
	}
	var bs []replication.RemoteBackup
	if err := cl.Do(c.Context, "GET", "/v1/remotes/"+url.PathEscape(remote)+"/backups", q, nil, &bs); err != nil {
		return err
	}
	if t := c.String("type"); t != "" {
		var keep []replication.RemoteBackup
		for _, b := range bs {
			if b.Type == t {
				keep = append(keep, b)
			}
		}
		bs = keep
	}
	return show(c, bs, func(w io.Writer) error {
		t := newTable(w, "ID", "NAME", "SERVER", "TYPE", "STATUS", "CREATED", "SIZE", "REPLICATION", "REPLICA")
		for _, b := range bs {
			st := b.Status
			if b.Damaged {
				st += ",damaged"
			}
			if b.Replica {
				st += ",replica"
			}
			t.row(b.ID, b.Name, b.ServerName, b.Type, st, timeH(b.Created), bytesH(b.Size), replicationStateH(b.Replication), orDash(b.Replication.ReplicaName))
		}
		return t.flush()
	})
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

func printRemoteBackup(w io.Writer, remote string, b replication.RemoteBackup) error {
	fmt.Fprintf(w, "id:          %s (on remote %s)\nname:        %s\nserver:      %s (%s)\nstatus:      %s\ntype:        %s\n", b.ID, remote, b.Name, b.ServerName, b.ServerID, b.Status, b.Type)
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
