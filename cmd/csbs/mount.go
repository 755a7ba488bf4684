package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

func mountCommand() *cli.Command {
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
			cl, err := client(c)
			if err != nil {
				return err
			}
			if c.NArg() == 0 {
				var ms []catalog.MountRecord
				if err := cl.Do(c.Context, "GET", "/v1/mounts", nil, nil, &ms); err != nil {
					return err
				}
				return show(c, ms, func(w io.Writer) error {
					t := newTable(w, "PATH", "KIND", "SERVER", "BACKUP", "DISK")
					for _, m := range ms {
						kind := "fuse"
						if m.Browse {
							kind = "browse"
						}
						t.row(m.Path, kind, orDash(m.Server), orDash(m.Backup), orDash(m.Disk))
					}
					return t.flush()
				})
			}
			if err := needArgs(c, 1, "PATH"); err != nil {
				return err
			}
			path, _ := filepath.Abs(c.Args().First())
			var m catalog.MountRecord
			if err := cl.Do(c.Context, "POST", "/v1/mounts", nil, api.MountRequest{Path: path, Server: c.String("server"), Backup: c.String("backup")}, &m); err != nil {
				return err
			}
			return show(c, m, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "mounted at %s\n", m.Path)
				return err
			})
		},
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name: "umount", Usage: "unmount a csbs mount", ArgsUsage: "PATH",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "PATH"); err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			path, _ := filepath.Abs(c.Args().First())
			return cl.Do(c.Context, "POST", "/v1/mounts/unmount", nil, api.MountRequest{Path: path}, nil)
		},
	}
}

func browseCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "browse",
			Usage:     "loop-mount a backup disk read-only at PATH to copy single files (daemon runs as root)",
			UsageText: "csbs backup browse golden --disk vda /mnt/golden\n   cp /mnt/golden/etc/hostname /tmp/\n   csbs backup unbrowse /mnt/golden",
			ArgsUsage: "BACKUP PATH",
			Flags:     []cli.Flag{&cli.StringFlag{Name: "disk", Usage: "`DISK` to browse (default: the first)"}, jsonFlag},
			Action: func(c *cli.Context) error {
				if err := needArgs(c, 2, "BACKUP PATH"); err != nil {
					return err
				}
				cl, err := client(c)
				if err != nil {
					return err
				}
				path, _ := filepath.Abs(c.Args().Get(1))
				var m catalog.MountRecord
				if err := cl.Do(c.Context, "POST", "/v1/backups/"+c.Args().Get(0)+"/browse", nil, api.MountRequest{Path: path, Disk: c.String("disk")}, &m); err != nil {
					return err
				}
				return show(c, m, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "disk %s of backup %s is mounted read-only at %s\n", m.Disk, c.Args().Get(0), m.Path)
					return err
				})
			},
		},
		{
			Name: "unbrowse", Usage: "undo csbs backup browse", ArgsUsage: "PATH",
			Action: func(c *cli.Context) error {
				if err := needArgs(c, 1, "PATH"); err != nil {
					return err
				}
				cl, err := client(c)
				if err != nil {
					return err
				}
				path, _ := filepath.Abs(c.Args().First())
				return cl.Do(c.Context, "POST", "/v1/browse/unmount", nil, api.MountRequest{Path: path}, nil)
			},
		},
	}
}
