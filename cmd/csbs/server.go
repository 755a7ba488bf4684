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
			verb[api.ServerView]{
				Name:  "add",
				Usage: "add a server",
				Examples: `csbs server add --name web1 --disk vda=/images/web1-vda.img
   csbs server add --name db1 --az local-1a --disk vda=/dev/vg0/db1 --disk vdb=nbd+unix:///db1-data?socket=/run/qemu-nbd.sock`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "server `NAME` (required)"},
					&cli.StringFlag{Name: "az", Usage: "availability `ZONE` (default: the region's first AZ)"},
					&cli.StringSliceFlag{Name: "disk", Usage: "`NAME=SOURCE`: an image file, block device or NBD URI (required; repeat for more disks)"},
				},
				Required: []string{"name", "disk"},
				JSON:     true,
				Method:   "POST", Path: apiPath("/v1/servers"),
				Body: func(c *cli.Context) (any, error) {
					req := api.AddServerRequest{Name: c.String("name"), AZ: c.String("az")}
					for _, d := range c.StringSlice("disk") {
						name, src, ok := strings.Cut(d, "=")
						if !ok || name == "" || src == "" {
							return nil, cli.Exit(fmt.Sprintf("--disk %q: want NAME=SOURCE, e.g. vda=/images/web1.img", d), 2)
						}
						req.Disks = append(req.Disks, catalog.Disk{Name: name, Source: absLocal(src)})
					}
					return req, nil
				},
				Done: func(_ *cli.Context, s api.ServerView) string {
					return fmt.Sprintf("added server %s (%s) in %s", s.Name, s.ID, s.AZ)
				},
				Print: printServer,
				Quiet: func(s api.ServerView) string { return s.ID },
			}.command(),
			listing[api.ServerView]{
				Usage:   "list servers",
				Path:    apiPath("/v1/servers"),
				Columns: []string{"ID", "NAME", "AZ", "DISKS", "SIZE", "POLICY"},
				Row: func(s api.ServerView) []any {
					var names []string
					var size int64
					for _, d := range s.Disks {
						names = append(names, d.Name)
						size += d.Size
					}
					return []any{s.ID, s.Name, s.AZ, strings.Join(names, ","), bytesH(size), orDash(s.PolicyName)}
				},
				Empty: "no servers (add one: csbs server add --name NAME --disk vda=/path/to/disk.img)",
			}.command(),
			verb[api.ServerView]{
				Name: "show", Usage: "show a server", Args: "SERVER", JSON: true,
				Path:  apiPath("/v1/servers/", 0),
				Print: printServer,
			}.command(),
			verb[struct{}]{
				Name: "rm", Usage: "remove a server (its backups stay until deleted)", Args: "SERVER",
				Method: "DELETE", Path: apiPath("/v1/servers/", 0),
				Done: func(c *cli.Context, _ struct{}) string {
					return fmt.Sprintf("removed server %s (its backups stay until deleted)", arg(c, 0))
				},
			}.command(),
		},
	}
}

func printServer(w io.Writer, s api.ServerView) error {
	fmt.Fprintf(w, "id:       %s\nname:     %s\nregion:   %s\naz:       %s\npolicy:   %s\ncreated:  %s\n", s.ID, s.Name, s.Region, s.AZ, orDash(s.PolicyName), timeH(s.Created))
	if n := s.NextManual; n != nil {
		fmt.Fprintf(w, "next manual backup: %s (%s)\n", n.Type, n.Reason)
	}
	if n := s.NextAutomatic; n != nil && s.PolicyName != "" {
		fmt.Fprintf(w, "next automatic backup: %s (%s)\n", n.Type, n.Reason)
	}
	t := newTable(w, "DISK", "SIZE", "SOURCE")
	for _, d := range s.Disks {
		t.row(d.Name, bytesH(d.Size), d.Source)
	}
	return t.flush()
}
