package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
	"csbs/qemu"
)

// absSocket makes a socket path absolute ("none" and "" stay as they are).
func absSocket(p string) string {
	if p == "" || p == "none" {
		return p
	}
	return absLocal(p)
}

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "manage cloud servers (ECS) and their disks",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "add a server",
				UsageText: `csbs server add --name web1 --disk vda=/images/web1-vda.img
   csbs server add --name db1 --az local-1a --disk vda=/dev/vg0/db1 --disk vdb=nbd+unix:///db1-data?socket=/run/qemu-nbd.sock
   csbs server add --name vm1 --disk vda='qmp+unix:///vda?socket=/run/vm1.qmp'
   csbs server add --name vm1 --qmp /run/vm1.qmp     # every disk of the running VM`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "server `NAME`", Required: true},
					&cli.StringFlag{Name: "az", Usage: "availability `ZONE` (default: the region's first AZ)"},
					&cli.StringSliceFlag{Name: "disk", Usage: "`NAME=SOURCE`: an image file, block device, NBD URI or live VM disk qmp+unix:///NODE?socket=PATH (repeat for more disks)"},
					&cli.StringFlag{Name: "qmp", Usage: "add every disk of the running VM behind this QMP socket `PATH` (instead of --disk)"},
					&cli.StringFlag{Name: "qga", Usage: "with --qmp: the VM's guest agent socket `PATH` (default: found through QMP; none: do not freeze)"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 0, "--name NAME --disk vda=SOURCE"); err != nil {
						return err
					}
					if len(c.StringSlice("disk")) == 0 && c.String("qmp") == "" {
						return cli.Exit("server add: give --disk NAME=SOURCE (repeatable) or --qmp PATH", 2)
					}
					req := api.AddServerRequest{Name: c.String("name"), AZ: c.String("az"), QMP: absSocket(c.String("qmp")), QGA: absSocket(c.String("qga"))}
					for _, d := range c.StringSlice("disk") {
						name, src, ok := strings.Cut(d, "=")
						if !ok || name == "" || src == "" {
							return cli.Exit(fmt.Sprintf("--disk %q: want NAME=SOURCE, e.g. vda=/images/web1.img", d), 2)
						}
						req.Disks = append(req.Disks, catalog.Disk{Name: name, Source: absLocal(src)})
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var s api.ServerView
					if err := cl.Do(c.Context, "POST", "/v1/servers", nil, req, &s); err != nil {
						return err
					}
					return show(c, s, func(w io.Writer) error { return printServer(w, s) })
				},
			},
			{
				Name:      "discover",
				Usage:     "list the disks of a running QEMU VM through its QMP socket",
				UsageText: "csbs server discover --qmp /run/vm1.qmp",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "qmp", Usage: "the VM's QMP socket `PATH`", Required: true},
					&cli.StringFlag{Name: "qga", Usage: "the VM's guest agent socket `PATH` (default: found through QMP; none: do not freeze)"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 0, "--qmp PATH"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ds []qemu.DiscoveredDisk
					req := api.DiscoverRequest{QMP: absLocal(c.String("qmp")), QGA: absSocket(c.String("qga"))}
					if err := cl.Do(c.Context, "POST", "/v1/servers/discover", nil, req, &ds); err != nil {
						return err
					}
					return show(c, ds, func(w io.Writer) error {
						t := newTable(w, "DISK", "SIZE", "NODE", "FORMAT", "SOURCE")
						for _, d := range ds {
							src := d.Source
							if d.Skipped != "" {
								src = "skipped: " + d.Skipped
							}
							t.row(d.Name, bytesH(d.Size), d.NodeName, d.Driver, src)
						}
						return t.flush()
					})
				},
			},
			{
				Name: "ls", Usage: "list servers", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ss []api.ServerView
					if err := cl.Do(c.Context, "GET", "/v1/servers", nil, nil, &ss); err != nil {
						return err
					}
					return show(c, ss, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "AZ", "DISKS", "SIZE", "POLICY")
						for _, s := range ss {
							var names []string
							var size int64
							for _, d := range s.Disks {
								names = append(names, d.Name)
								size += d.Size
							}
							t.row(s.ID, s.Name, s.AZ, strings.Join(names, ","), bytesH(size), orDash(s.PolicyName))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a server", ArgsUsage: "SERVER", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "SERVER"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var s api.ServerView
					if err := cl.Do(c.Context, "GET", "/v1/servers/"+c.Args().First(), nil, nil, &s); err != nil {
						return err
					}
					return show(c, s, func(w io.Writer) error { return printServer(w, s) })
				},
			},
			{
				Name: "rm", Usage: "remove a server (its backups stay until deleted)", ArgsUsage: "SERVER",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "SERVER"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var out struct {
						Warning string `json:"warning"`
					}
					if err := cl.Do(c.Context, "DELETE", "/v1/servers/"+c.Args().First(), nil, nil, &out); err != nil {
						return err
					}
					if out.Warning != "" {
						fmt.Fprintln(c.App.ErrWriter, "warning:", out.Warning)
					}
					return nil
				},
			},
		},
	}
}

func printServer(w io.Writer, s api.ServerView) error {
	fmt.Fprintf(w, "id:       %s\nname:     %s\nregion:   %s\naz:       %s\npolicy:   %s\ncreated:  %s\n", s.ID, s.Name, s.Region, s.AZ, orDash(s.PolicyName), timeH(s.Created))
	fmt.Fprintf(w, "instant restore: manual full backup after IR enabled: %v; had automatic backups: %v\n", s.ManualFullAfterIR, s.HadAutoBackup)
	t := newTable(w, "DISK", "SIZE", "SOURCE")
	for _, d := range s.Disks {
		t.row(d.Name, bytesH(d.Size), d.Source)
	}
	return t.flush()
}
