package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

func mountCommand() *cli.Command {
	list := listing[catalog.MountRecord]{
		Path:    apiPath("/v1/mounts"),
		Columns: []string{"PATH", "KIND", "SERVER", "BACKUP", "DISK"},
		Row: func(m catalog.MountRecord) []any {
			return []any{m.Path, mountKind(m), orDash(m.Server), orDash(m.Backup), orDash(m.Disk)}
		},
		Empty: "no mounts (csbs mount PATH mounts every Enhanced backup; csbs backup browse BACKUP PATH one disk's files)",
	}.command()
	mount := verb[catalog.MountRecord]{
		Args:   "PATH",
		Method: "POST", Path: apiPath("/v1/mounts"),
		Body: func(c *cli.Context) (any, error) {
			return api.MountRequest{Path: absPath(arg(c, 0)), Server: c.String("server"), Backup: c.String("backup")}, nil
		},
		Done: func(_ *cli.Context, m catalog.MountRecord) string {
			return fmt.Sprintf("mounted Enhanced backups read-only at %s (csbs umount %s)", m.Path, m.Path)
		},
	}.command()
	return &cli.Command{
		Name:  "mount",
		Usage: "mount Enhanced backups read-only as /<project>/<server>/<backup>/<disk>.img (no PATH: list mounts)",
		UsageText: `csbs mount /mnt/backups
   csbs mount /mnt/web1 --server web1
   csbs mount                     # list mounts`,
		ArgsUsage: "[PATH]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Usage: "only backups of `SERVER`"},
			&cli.StringFlag{Name: "backup", Usage: "only `BACKUP`"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return list.Action(c)
			}
			return mount.Action(c)
		},
	}
}

func mountKind(m catalog.MountRecord) string {
	if m.Browse {
		return "browse"
	}
	return "fuse"
}

// absPath makes a local path absolute for the daemon, which runs in
// another directory.
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

func umountCommand() *cli.Command {
	return verb[struct{}]{
		Name: "umount", Usage: "unmount a csbs mount", Args: "PATH",
		Method: "POST", Path: apiPath("/v1/mounts/unmount"),
		Body: func(c *cli.Context) (any, error) { return api.MountRequest{Path: absPath(arg(c, 0))}, nil },
		Done: func(c *cli.Context, _ struct{}) string { return "unmounted " + absPath(arg(c, 0)) },
	}.command()
}

func browseCommand() *cli.Command {
	return verb[catalog.MountRecord]{
		Name:     "browse",
		Usage:    "loop-mount a backup disk read-only at PATH to copy single files (daemon runs as root)",
		Examples: "csbs backup browse golden --disk vda /mnt/golden\n   cp /mnt/golden/etc/hostname /tmp/\n   csbs backup unbrowse /mnt/golden",
		Args:     "BACKUP PATH", JSON: true,
		Flags:  []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "`DISK` to browse (default: the first)"}},
		Method: "POST", Path: apiPath("/v1/backups/", 0, "/browse"),
		Body: func(c *cli.Context) (any, error) {
			return api.MountRequest{Path: absPath(arg(c, 1)), Disk: c.String("disk")}, nil
		},
		Done: func(c *cli.Context, m catalog.MountRecord) string {
			return fmt.Sprintf("mounted disk %s of backup %s read-only at %s (csbs backup unbrowse %s)", m.Disk, arg(c, 0), m.Path, m.Path)
		},
	}.command()
}

func unbrowseCommand() *cli.Command {
	return verb[struct{}]{
		Name: "unbrowse", Usage: "undo csbs backup browse", Args: "PATH",
		Method: "POST", Path: apiPath("/v1/browse/unmount"),
		Body: func(c *cli.Context) (any, error) { return api.MountRequest{Path: absPath(arg(c, 0))}, nil },
		Done: func(c *cli.Context, _ struct{}) string { return "unmounted " + absPath(arg(c, 0)) },
	}.command()
}
