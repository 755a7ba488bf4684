package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "manage cloud servers (ECS) and their disks",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "add a server",
				UsageText: `csbs server add --name web1 --disk vda=/images/web1-vda.img
   csbs server add --name db1 --az local-1a --disk vda=/dev/vg0/db1 --disk vdb=nbd+unix:///db1-data?socket=/run/qemu-nbd.sock`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "server `NAME`", Required: true},
					&cli.StringFlag{Name: "az", Usage: "availability `ZONE` (default: the region's first AZ)"},
					&cli.StringSliceFlag{Name: "disk", Usage: "`NAME=SOURCE`: an image file, block device or NBD URI (repeat for more disks)", Required: true},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 0, "--name NAME --disk vda=SOURCE"); err != nil {
						return err
					}
					req := api.AddServerRequest{Name: c.String("name"), AZ: c.String("az")}
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
				Name: "ls", Usage: "list servers", Flags: pageFlags(jsonFlag),
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ss []api.ServerView
					if err := listPage(c, cl, "/v1/servers", nil, &ss); err != nil {
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
					return cl.Do(c.Context, "DELETE", "/v1/servers/"+c.Args().First(), nil, nil, nil)
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
