package main

import (
	"io"

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
