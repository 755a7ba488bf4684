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
			verb[api.ServerView]{
				Name:  "add",
				Usage: "add a server",
				Examples: `csbs server add --name web1 --disk vda=/images/web1-vda.img
   csbs server add --name db1 --az local-1a --disk vda=/dev/vg0/db1 --disk vdb=nbd+unix:///db1-data?socket=/run/qemu-nbd.sock
   csbs server add --name vm1 --disk vda='qmp+unix:///vda?socket=/run/vm1.qmp'
   csbs server add --name vm1 --qmp /run/vm1.qmp     # every disk of the running VM`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "server `NAME` (required)"},
					&cli.StringFlag{Name: "az", Usage: "availability `ZONE` (default: the region's first AZ)"},
					&cli.StringSliceFlag{Name: "disk", Usage: "`NAME=SOURCE`: an image file, block device, NBD URI or live VM disk qmp+unix:///NODE?socket=PATH (repeat for more disks)"},
					&cli.StringFlag{Name: "qmp", Usage: "add every disk of the running VM behind this QMP socket `PATH` (instead of --disk)"},
					&cli.StringFlag{Name: "qga", Usage: "with --qmp: the VM's guest agent socket `PATH` (default: found through QMP; none: do not freeze)"},
				},
				Required: []string{"name"},
				JSON:     true,
				Method:   "POST", Path: apiPath("/v1/servers"),
				Body: func(c *cli.Context) (any, error) {
					if len(c.StringSlice("disk")) == 0 && c.String("qmp") == "" {
						return nil, cli.Exit("server add: --disk NAME=SOURCE (repeatable) or --qmp PATH is required (see csbs server add --help)", 2)
					}
					req := api.AddServerRequest{Name: c.String("name"), AZ: c.String("az"), QMP: absSocket(c.String("qmp")), QGA: absSocket(c.String("qga"))}
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
			verb[[]qemu.DiscoveredDisk]{
				Name:     "discover",
				Usage:    "list the disks of a running QEMU VM through its QMP socket",
				Examples: "csbs server discover --qmp /run/vm1.qmp",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "qmp", Usage: "the VM's QMP socket `PATH` (required)"},
					&cli.StringFlag{Name: "qga", Usage: "the VM's guest agent socket `PATH` (default: found through QMP; none: do not freeze)"},
				},
				Required: []string{"qmp"},
				JSON:     true,
				Method:   "POST", Path: apiPath("/v1/servers/discover"),
				Body: func(c *cli.Context) (any, error) {
					return api.DiscoverRequest{QMP: absLocal(c.String("qmp")), QGA: absSocket(c.String("qga"))}, nil
				},
				Print: tableOf([]string{"DISK", "SIZE", "NODE", "FORMAT", "SOURCE"}, func(d qemu.DiscoveredDisk) []any {
					src := d.Source
					if d.Skipped != "" {
						src = "skipped: " + d.Skipped
					}
					return []any{d.Name, bytesH(d.Size), d.NodeName, d.Driver, src}
				}, "no disks found"),
			}.command(),
			listing[api.ServerView]{
				Paged:   true,
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
			verb[removedServer]{
				Name: "rm", Usage: "remove a server (its backups stay until deleted)", Args: "SERVER",
				Method: "DELETE", Path: apiPath("/v1/servers/", 0),
				Then: func(c *cli.Context, _ *api.Client, r removedServer) (removedServer, error) {
					if r.Warning != "" {
						fmt.Fprintln(c.App.ErrWriter, "warning:", r.Warning)
					}
					return r, nil
				},
				Done: func(c *cli.Context, _ removedServer) string {
					return fmt.Sprintf("removed server %s (its backups stay until deleted)", arg(c, 0))
				},
			}.command(),
		},
	}
}

// removedServer is the answer of server rm: empty, or a warning (a live
// VM kept csbs's dirty bitmaps).
type removedServer struct {
	Warning string `json:"warning"`
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
