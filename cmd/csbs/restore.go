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
			verb[catalog.Restore]{
				Name:  "start",
				Usage: "restore disks of a backup to targets (image files or block devices)",
				Examples: `csbs restore start manualbk_1a2b --disk vda=/restore/web1-vda.img --wait
   csbs restore start golden --instant --disk vda=/restore/web1-vda.img --rate 100MiB/s`,
				Args: "BACKUP", JSON: true,
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "disk", Usage: "`DISK=TARGET` (required; repeat; a relative path is taken from the current directory)"},
					&cli.BoolFlag{Name: "force", Usage: "overwrite a target that holds data"},
					&cli.BoolFlag{Name: "instant", Usage: "instant restore: export now, hydrate in the background"},
					&cli.StringFlag{Name: "rate", Usage: "hydration `RATE` limit, e.g. 200MiB/s; 0 = unlimited (default: restore.default_rate)"},
					&cli.BoolFlag{Name: "wait", Usage: "wait until the targets hold the whole backup, showing progress (an instant restore's exports stay up until csbs restore finish)"},
					quietFlag("print only the restore id"),
				},
				Required: []string{"disk"},
				Method:   "POST", Path: apiPath("/v1/restores"),
				Body: restoreRequest,
				Then: func(c *cli.Context, cl *api.Client, r catalog.Restore) (catalog.Restore, error) {
					if !c.Bool("wait") || r.JobID == "" {
						return r, nil
					}
					if _, err := waitJob(c, cl, r.JobID); err != nil {
						return r, err
					}
					return call[catalog.Restore](c, cl, "GET", "/v1/restores/"+r.ID, nil, nil)
				},
				Done: func(c *cli.Context, r catalog.Restore) string {
					switch {
					case c.Bool("wait") && r.Instant:
						return fmt.Sprintf("instant restore %s of backup %s is %s (csbs restore finish %s detaches its exports)", r.ID, r.BackupName, r.State, r.ID)
					case c.Bool("wait"):
						return fmt.Sprintf("restore %s of backup %s %s", r.ID, r.BackupName, r.State)
					case r.Instant:
						return fmt.Sprintf("started instant restore %s of backup %s: the targets are usable now through their NBD exports (csbs export ls); hydration runs as job %s", r.ID, r.BackupName, orDash(r.JobID))
					}
					return fmt.Sprintf("started restore %s of backup %s as job %s (follow it: csbs job wait %s)", r.ID, r.BackupName, r.JobID, r.JobID)
				},
				Print: printRestore,
				Quiet: func(r catalog.Restore) string { return r.ID },
			}.command(),
			restoreAction("pause", "pause the background hydration of an instant restore", "paused hydration of restore %s (its exports keep serving; csbs restore resume %[1]s)"),
			restoreAction("resume", "resume hydration", "resumed hydration of restore %s"),
			restoreAction("finish", "end a complete instant restore: detach its exports (the targets are plain disks)", "finished restore %s: its exports are gone, the targets are plain disks"),
			restoreAction("cancel", "stop a restore (an instant restore's exports are removed; targets stay partial)", "canceled restore %s (its targets hold a partial disk)"),
			listing[catalog.Restore]{
				Paged:   true,
				Usage:   "list restores",
				Path:    apiPath("/v1/restores"),
				Columns: []string{"ID", "BACKUP", "KIND", "STATE", "PROGRESS", "TARGETS", "CREATED"},
				Row: func(r catalog.Restore) []any {
					return []any{r.ID, backupOf(r), kind(r), r.State, pct(r.Done, r.Total), targets(r), timeH(r.Created)}
				},
				Empty: "no restores (csbs restore start BACKUP --disk vda=TARGET starts one)",
			}.command(),
			verb[catalog.Restore]{
				Name: "show", Usage: "show a restore", Args: "RESTORE", JSON: true,
				Path:  apiPath("/v1/restores/", 0),
				Print: printRestore,
			}.command(),
		},
	}
}

// restoreRequest reads restore start's flags; bad ones are refused before
// anything is sent.
func restoreRequest(c *cli.Context) (any, error) {
	req := api.StartRestoreRequest{Backup: arg(c, 0), Force: c.Bool("force"), Instant: c.Bool("instant")}
	if v := c.String("rate"); v != "" {
		r, err := config.ParseRate(v)
		if err != nil {
			return nil, cli.Exit("--rate: "+err.Error(), 2)
		}
		req.Rate = r
		if r == 0 {
			req.Rate = -1 // unlimited
		}
	}
	for _, d := range c.StringSlice("disk") {
		disk, target, ok := strings.Cut(d, "=")
		if !ok || disk == "" || target == "" {
			return nil, cli.Exit(fmt.Sprintf("--disk %q: want DISK=TARGET, e.g. vda=/restore/vda.img", d), 2)
		}
		req.Targets = append(req.Targets, catalog.RestoreTarget{Disk: disk, Target: absLocal(target)})
	}
	return req, nil
}

func restoreAction(action, usage, done string) *cli.Command {
	var flags []cli.Flag
	if action == "finish" {
		flags = append(flags, &cli.BoolFlag{Name: "wait", Usage: "wait until hydration is complete, then finish"})
	}
	return verb[catalog.Restore]{
		Name: action, Usage: usage, Args: "RESTORE", Flags: flags, JSON: true,
		Method: "POST", Path: apiPath("/v1/restores/", 0, "/"+action),
		Before: func(c *cli.Context, cl *api.Client) error {
			if c.Bool("wait") {
				return waitHydrated(c, cl, arg(c, 0))
			}
			return nil
		},
		Done:  func(_ *cli.Context, r catalog.Restore) string { return fmt.Sprintf(done, r.ID) },
		Print: printRestore,
	}.command()
}

// waitHydrated waits until an instant restore's targets hold the whole
// backup: through its hydration job (a progress bar), or by polling a
// restore that has no job running.
func waitHydrated(c *cli.Context, cl *api.Client, id string) error {
	last := time.Time{}
	for {
		r, err := call[catalog.Restore](c, cl, "GET", "/v1/restores/"+id, nil, nil)
		if err != nil {
			return err
		}
		switch r.State {
		case catalog.RestoreComplete:
			return nil
		case catalog.RestoreRunning, catalog.RestorePaused:
		default:
			return fmt.Errorf("restore %s is %s: %s", r.ID, r.State, r.Error)
		}
		if r.JobID != "" && r.State == catalog.RestoreRunning {
			j, err := waitJob(c, cl, r.JobID)
			if err != nil {
				return err
			}
			if j.Finished() {
				continue // read the restore's state again
			}
		}
		if time.Since(last) > 2*time.Second && !quietMode(c) {
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

// backupOf names a restore's backup by its name, as other lists do.
func backupOf(r catalog.Restore) string {
	if r.BackupName != "" {
		return r.BackupName
	}
	return r.BackupID
}

func targets(r catalog.Restore) string {
	var s []string
	for _, t := range r.Targets {
		s = append(s, t.Disk+"="+t.Target)
	}
	return strings.Join(s, " ")
}

// rateLimit says an instant restore's hydration limit (Rate: bytes per
// second, -1 for none).
func rateLimit(r catalog.Restore) string {
	if r.Rate <= 0 {
		return "no limit"
	}
	return "limit " + bytesH(r.Rate) + "/s"
}

func printRestore(w io.Writer, r catalog.Restore) error {
	backup := r.BackupID
	if r.BackupName != "" {
		backup = r.BackupName + " (" + r.BackupID + ")"
	}
	fmt.Fprintf(w, "id:       %s\nbackup:   %s\nkind:     %s\nstate:    %s\nprogress: %s of %s (%s)\ntargets:  %s\ncreated:  %s\n",
		r.ID, backup, kind(r), r.State, bytesH(r.Done), bytesH(r.Total), pct(r.Done, r.Total), targets(r), timeH(r.Created))
	if r.JobID != "" {
		fmt.Fprintf(w, "job:      %s\n", r.JobID)
	}
	live := r.State == catalog.RestoreRunning || r.State == catalog.RestorePaused
	if r.Instant && live {
		fmt.Fprintf(w, "rate:     %s/s of data copied (%s)", bytesH(int64(r.RateBps)), rateLimit(r))
		if r.ETASeconds >= 1 {
			fmt.Fprintf(w, ", about %s left", (time.Duration(r.ETASeconds) * time.Second).String())
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
