package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "create, list, show and delete backups",
		Subcommands: []*cli.Command{
			backupCreateCommand(),
			withRemote(listing[api.BackupView]{
				Paged: true,
				Usage: "list backups, newest first (--remote R: the remote's, and whether each is replicated here)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "server", Usage: "only backups of `SERVER`"},
					&cli.StringFlag{Name: "type", Usage: "only `TYPE` common or enhanced"},
					remoteFlag("list the backups of `REMOTE` (id or name there) and their replication state here"),
				},
				Path:    apiPath("/v1/backups"),
				Query:   queryOf("server", "type"),
				Columns: []string{"ID", "NAME", "SERVER", "TYPE", "STATUS", "TRIGGER", "CREATED", "SIZE", "NEW"},
				Row: func(b api.BackupView) []any {
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
					return []any{b.ID, b.Name, b.ServerName, b.Type, st, b.Trigger, timeH(b.Created), bytesH(b.Size), bytesH(added)}
				},
				Empty: "no backups (make one: csbs backup create SERVER --wait)",
			}.command(), remoteBackupsCommand()),
			withRemote(verb[api.BackupView]{
				Name: "show", Usage: "show a backup, its type and why (--remote R: a backup of the remote, and its replication state here)", Args: "BACKUP", JSON: true,
				Flags: []cli.Flag{remoteFlag("BACKUP is a backup of `REMOTE` (its id or name there)")},
				Path:  apiPath("/v1/backups/", 0),
				Print: printBackup,
			}.command(), remoteBackupCommand()),
			backupReplicateCommand(),
			verb[api.DeletedBackup]{
				Name: "rm", Usage: "delete a backup (space returns with csbs gc)", Args: "BACKUP", JSON: true,
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "also delete a protected backup"}},
				Method: "DELETE", Path: apiPath("/v1/backups/", 0),
				Query: func(c *cli.Context) url.Values {
					if c.Bool("force") {
						return url.Values{"force": {"true"}}
					}
					return nil
				},
				Done: func(_ *cli.Context, d api.DeletedBackup) string {
					return fmt.Sprintf("deleted backup %s (%s); csbs gc gives its space back", d.Name, d.ID)
				},
			}.command(),
			verb[[]api.ExportInfo]{
				Name:     "attach",
				Usage:    "export an Enhanced backup's disks read-only over NBD",
				Examples: "csbs backup attach golden --disk vda\n   nbdinfo \"$(csbs backup attach golden --disk vda --quiet)\"",
				Args:     "BACKUP", JSON: true,
				Flags:  []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "only `DISK` (default: every disk)"}, quietFlag("print only the NBD URIs, one per line")},
				Method: "POST", Path: apiPath("/v1/backups/", 0, "/attach"),
				Body: func(c *cli.Context) (any, error) { return api.AttachRequest{Disk: c.String("disk")}, nil },
				Done: func(c *cli.Context, es []api.ExportInfo) string {
					return fmt.Sprintf("attached backup %s read-only over NBD (csbs backup detach %s removes the exports):", arg(c, 0), arg(c, 0))
				},
				Print: printExports,
				Quiet: func(es []api.ExportInfo) string {
					var uris []string
					for _, e := range es {
						uris = append(uris, e.URI)
					}
					return strings.Join(uris, "\n")
				},
			}.command(),
			verb[struct{}]{
				Name: "detach", Usage: "remove a backup's NBD exports", Args: "BACKUP",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "only `DISK` (default: every attached disk)"}},
				Method: "POST", Path: apiPath("/v1/backups/", 0, "/detach"),
				Body: func(c *cli.Context) (any, error) { return api.AttachRequest{Disk: c.String("disk")}, nil },
				Done: func(c *cli.Context, _ struct{}) string {
					if d := c.String("disk"); d != "" {
						return fmt.Sprintf("detached disk %s of backup %s", d, arg(c, 0))
					}
					return "detached backup " + arg(c, 0)
				},
			}.command(),
			browseCommand(),
			unbrowseCommand(),
			verb[api.BackupView]{
				Name: "protect", Usage: "protect a backup from retention and plain deletion", Args: "BACKUP", JSON: true,
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "off", Usage: "remove the protection"}},
				Method: "PATCH", Path: apiPath("/v1/backups/", 0),
				Body: func(c *cli.Context) (any, error) {
					on := !c.Bool("off")
					return api.UpdateBackupRequest{Protected: &on}, nil
				},
				Done: func(_ *cli.Context, b api.BackupView) string {
					if b.Protected {
						return fmt.Sprintf("protected backup %s: retention keeps it, and csbs backup rm needs --force", b.Name)
					}
					return fmt.Sprintf("backup %s is no longer protected", b.Name)
				},
			}.command(),
		},
	}
}

// backupCreateCommand queues a backup job and, with --wait, follows it
// and shows the backup it made.
func backupCreateCommand() *cli.Command {
	return &cli.Command{
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
			req := api.CreateBackupRequest{Server: arg(c, 0), Name: c.String("name"), Full: c.Bool("full"), EnableIR: c.Bool("enable-instant-restore")}
			j, err := call[catalog.Job](c, cl, "POST", "/v1/backups", nil, req)
			if err != nil {
				return err
			}
			if !c.Bool("wait") {
				return emit(c, j, fmt.Sprintf("queued backup job %s of server %s (follow it: csbs job wait %s)", j.ID, arg(c, 0), j.ID), jobID, nil)
			}
			if j, err = waitJob(c, cl, j.ID); err != nil {
				return err
			}
			b, err := call[api.BackupView](c, cl, "GET", "/v1/backups/"+url.PathEscape(j.BackupID), nil, nil)
			if err != nil {
				return err
			}
			return emit(c, b, fmt.Sprintf("created %s backup %s of server %s", b.Type, b.Name, b.ServerName), func(b api.BackupView) string { return b.ID }, printBackup)
		},
	}
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
