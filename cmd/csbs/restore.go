package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
	"csbs/config"
)

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "restore backups to disks",
		Subcommands: []*cli.Command{
			{
				Name:      "start",
				Usage:     "restore disks of a backup to targets (image files or block devices)",
				UsageText: `csbs restore start manualbk_1a2b --disk vda=/restore/web1-vda.img --wait`,
				ArgsUsage: "BACKUP",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "disk", Usage: "`DISK=TARGET` (repeat; a relative path is taken from the current directory)", Required: true},
					&cli.BoolFlag{Name: "force", Usage: "overwrite a target that holds data"},
					&cli.BoolFlag{Name: "instant", Usage: "instant restore: export now, hydrate in the background"},
					&cli.StringFlag{Name: "rate", Usage: "hydration `RATE` limit, e.g. 200MiB/s; 0 = unlimited (default: restore.default_rate)"},
					&cli.BoolFlag{Name: "wait", Usage: "wait for the restore and show progress (normal restores)"},
					quietFlag("print only the restore id"),
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "BACKUP --disk vda=TARGET"); err != nil {
						return err
					}
					req := api.StartRestoreRequest{Backup: c.Args().First(), Force: c.Bool("force"), Instant: c.Bool("instant")}
					if v := c.String("rate"); v != "" {
						r, err := config.ParseRate(v)
						if err != nil {
							return cli.Exit("--rate: "+err.Error(), 2)
						}
						req.Rate = r
						if r == 0 {
							req.Rate = -1 // unlimited
						}
					}
					for _, d := range c.StringSlice("disk") {
						disk, target, ok := strings.Cut(d, "=")
						if !ok || disk == "" || target == "" {
							return cli.Exit(fmt.Sprintf("--disk %q: want DISK=TARGET, e.g. vda=/restore/vda.img", d), 2)
						}
						req.Targets = append(req.Targets, catalog.RestoreTarget{Disk: disk, Target: absLocal(target)})
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var r catalog.Restore
					if err := cl.Do(c.Context, "POST", "/v1/restores", nil, req, &r); err != nil {
						return err
					}
					if c.Bool("wait") && r.JobID != "" {
						if _, err := waitJob(c, cl, r.JobID); err != nil {
							return err
						}
						if err := cl.Do(c.Context, "GET", "/v1/restores/"+r.ID, nil, nil, &r); err != nil {
							return err
						}
					}
					if c.Bool("quiet") {
						_, err := fmt.Fprintln(c.App.Writer, r.ID)
						return err
					}
					return show(c, r, func(w io.Writer) error { return printRestore(w, r) })
				},
			},
			restoreAction("pause", "pause the background hydration of an instant restore"),
			restoreAction("resume", "resume hydration"),
			restoreAction("finish", "end a complete instant restore: detach its exports (the targets are plain disks)"),
			restoreAction("cancel", "stop a restore (an instant restore's exports are removed; targets stay partial)"),
			{
				Name: "ls", Usage: "list restores", Flags: pageFlags(jsonFlag),
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var rs []catalog.Restore
					if err := listPage(c, cl, "/v1/restores", nil, &rs); err != nil {
						return err
					}
					return show(c, rs, func(w io.Writer) error {
						t := newTable(w, "ID", "BACKUP", "KIND", "STATE", "PROGRESS", "TARGETS", "CREATED")
						for _, r := range rs {
							t.row(r.ID, r.BackupID, kind(r), r.State, pct(r.Done, r.Total), targets(r), timeH(r.Created))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a restore", ArgsUsage: "RESTORE", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "RESTORE"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var r catalog.Restore
					if err := cl.Do(c.Context, "GET", "/v1/restores/"+c.Args().First(), nil, nil, &r); err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) error { return printRestore(w, r) })
				},
			},
		},
	}
}

func restoreAction(action, usage string) *cli.Command {
	flags := []cli.Flag{jsonFlag}
	if action == "finish" {
		flags = append(flags, &cli.BoolFlag{Name: "wait", Usage: "wait until hydration is complete, then finish"})
	}
	return &cli.Command{
		Name: action, Usage: usage, ArgsUsage: "RESTORE", Flags: flags,
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "RESTORE"); err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			if c.Bool("wait") {
				if err := waitHydrated(c, cl, c.Args().First()); err != nil {
					return err
				}
			}
			var r catalog.Restore
			if err := cl.Do(c.Context, "POST", "/v1/restores/"+c.Args().First()+"/"+action, nil, nil, &r); err != nil {
				return err
			}
			return show(c, r, func(w io.Writer) error { return printRestore(w, r) })
		},
	}
}

// waitHydrated polls an instant restore until hydration is complete,
// showing progress on stderr.
func waitHydrated(c *cli.Context, cl *api.Client, id string) error {
	last := time.Time{}
	for {
		var r catalog.Restore
		if err := cl.Do(c.Context, "GET", "/v1/restores/"+id, nil, nil, &r); err != nil {
			return err
		}
		switch r.State {
		case catalog.RestoreComplete:
			return nil
		case catalog.RestoreRunning, catalog.RestorePaused:
		default:
			return fmt.Errorf("restore %s is %s: %s", r.ID, r.State, r.Error)
		}
		if time.Since(last) > 2*time.Second {
			fmt.Fprintf(c.App.ErrWriter, "restore %s: %s, hydrated %s of %s (%s)\n", r.ID, r.State, bytesH(r.Done), bytesH(r.Total), pct(r.Done, r.Total))
			last = time.Now()
		}
		select {
		case <-c.Context.Done():
			return fmt.Errorf("stopped waiting (hydration goes on): %w", c.Context.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func kind(r catalog.Restore) string {
	if r.Instant {
		return "instant"
	}
	return "normal"
}

func targets(r catalog.Restore) string {
	var s []string
	for _, t := range r.Targets {
		s = append(s, t.Disk+"="+t.Target)
	}
	return strings.Join(s, " ")
}

func printRestore(w io.Writer, r catalog.Restore) error {
	fmt.Fprintf(w, "id:       %s\nbackup:   %s\nkind:     %s\nstate:    %s\nprogress: %s of %s (%s)\ntargets:  %s\ncreated:  %s\n",
		r.ID, r.BackupID, kind(r), r.State, bytesH(r.Done), bytesH(r.Total), pct(r.Done, r.Total), targets(r), timeH(r.Created))
	if r.Instant && r.RateBps > 0 {
		fmt.Fprintf(w, "rate:     %s/s", bytesH(int64(r.RateBps)))
		if r.ETASeconds > 0 {
			fmt.Fprintf(w, ", ETA %s", (time.Duration(r.ETASeconds) * time.Second).String())
		}
		fmt.Fprintln(w)
	}
	for _, t := range r.Targets {
		if t.Export != "" {
			fmt.Fprintf(w, "export:   %s (%s; see csbs export ls)\n", t.Export, t.Disk)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(w, "error:    %s\n", r.Error)
	}
	return nil
}
