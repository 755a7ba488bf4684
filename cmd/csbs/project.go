package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

func projectCommand() *cli.Command {
	return &cli.Command{
		Name:  "project",
		Usage: "manage projects (admin token)",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a project", ArgsUsage: "NAME", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var p api.ProjectView
					if err := cl.Do(c.Context, "POST", "/v1/projects", nil, api.CreateProjectRequest{Name: c.Args().First()}, &p); err != nil {
						return err
					}
					return show(c, p, func(w io.Writer) error {
						_, err := io.WriteString(w, "created project "+p.Name+" ("+p.ID+")\n")
						return err
					})
				},
			},
			{
				Name: "ls", Usage: "list projects", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ps []api.ProjectView
					if err := cl.Do(c.Context, "GET", "/v1/projects", nil, nil, &ps); err != nil {
						return err
					}
					return show(c, ps, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "INSTANT RESTORE", "CREATED")
						for _, p := range ps {
							ir := "disabled"
							if p.InstantRestore {
								ir = "enabled " + timeH(p.IREnabledAt)
							}
							t.row(p.ID, p.Name, ir, timeH(p.Created))
						}
						return t.flush()
					})
				},
			},
			{
				Name: "show", Usage: "show a project and the host paths its tokens may use", ArgsUsage: "NAME",
				UsageText: `csbs project show team-a
   CSBS_TOKEN=... csbs project show team-a    # a project token shows its own project`,
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					var p api.ProjectView
					if err := cl.Do(c.Context, "GET", "/v1/projects/"+c.Args().First(), nil, nil, &p); err != nil {
						return err
					}
					return show(c, p, func(w io.Writer) error { return printProject(w, p) })
				},
			},
			{
				Name: "rm", Usage: "remove an empty project", ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "DELETE", "/v1/projects/"+c.Args().First(), nil, nil, nil)
				},
			},
		},
	}
}

func printProject(w io.Writer, p api.ProjectView) error {
	ir := "disabled"
	if p.InstantRestore {
		ir = "enabled " + timeH(p.IREnabledAt)
	}
	list := func(v []string) string {
		if len(v) == 0 {
			return "none"
		}
		return strings.Join(v, ", ")
	}
	h := p.HostAccess
	_, err := fmt.Fprintf(w, "id:       %s\nname:     %s\ncreated:  %s\ninstant restore: %s\n"+
		"host access of the project's tokens (access.* in the daemon's config; the admin token may use any path outside the data dir):\n"+
		"  disk sources:    %s\n  restore targets: %s\n  mount paths:     %s\n  NBD TCP hosts:   %s\n",
		p.ID, p.Name, timeH(p.Created), ir, list(h.SourceDirs), list(h.TargetDirs), list(h.MountDirs), list(h.NBDHosts))
	return err
}
