package main

import (
	"fmt"
	"io"
	"net/url"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
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
				Name: "ls", Usage: "list backups, newest first",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "server", Usage: "only backups of `SERVER`"},
					&cli.StringFlag{Name: "type", Usage: "only `TYPE` common or enhanced"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
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
							t.row(b.ID, b.Name, b.ServerName, b.Type, st, b.Trigger, timeH(b.Created), bytesH(b.Size), bytesH(added))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a backup, its type and why", ArgsUsage: "BACKUP", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
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
	if b.Consistency != "" {
		fmt.Fprintf(w, "consistency: %s\n", b.Consistency)
	}
	if b.Note != "" {
		fmt.Fprintf(w, "note:      %s\n", b.Note)
	}
	t := newTable(w, "DISK", "SIZE", "DATA BLOCKS", "NEW BYTES", "READ", "MAP")
	for _, d := range b.Disks {
		t.row(d.Name, bytesH(d.Size), d.Blocks, bytesH(d.NewBytes), bytesH(d.ReadBytes), d.MapID)
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, d := range b.Disks {
		switch {
		case d.ChangedFrom != "":
			fmt.Fprintf(w, "disk %s: changed blocks since backup %s (dirty bitmap), next backup tracked by %s\n", d.Name, d.ChangedFrom, d.Bitmap)
		case d.FullRead != "":
			fmt.Fprintf(w, "disk %s: full read: %s; next backup tracked by %s\n", d.Name, d.FullRead, d.Bitmap)
		}
	}
	return nil
}
