package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "manage API tokens (of --project, or admin tokens with --admin)",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a token; its secret is shown once",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "a `NAME` for the token", Value: "token"},
					&cli.BoolFlag{Name: "admin", Usage: "create an admin token"},
					&cli.BoolFlag{Name: "replication", Usage: "a replication token: another appliance pulls the project's backups with it (csbs remote add there); it can do nothing else"},
					quietFlag("print only the secret"),
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var t api.TokenView
					if err := cl.Do(c.Context, "POST", "/v1/tokens", nil, api.CreateTokenRequest{Name: c.String("name"), Admin: c.Bool("admin"), Replication: c.Bool("replication")}, &t); err != nil {
						return err
					}
					if c.Bool("quiet") {
						_, err := fmt.Fprintln(c.App.Writer, t.Secret)
						return err
					}
					return show(c, t, func(w io.Writer) error {
						fmt.Fprintf(w, "token %s (%s) for project %s\n", t.ID, t.Name, t.Project)
						fmt.Fprintf(w, "secret (shown once, store it now):\n%s\n", t.Secret)
						return nil
					})
				},
			},
			{
				Name: "ls", Usage: "list tokens", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var ts []api.TokenView
					if err := cl.Do(c.Context, "GET", "/v1/tokens", nil, nil, &ts); err != nil {
						return err
					}
					return show(c, ts, func(w io.Writer) error {
						t := newTable(w, "ID", "NAME", "PROJECT", "KIND", "CREATED", "REVOKED")
						for _, tk := range ts {
							kind := "project"
							switch {
							case tk.Project == "(admin)":
								kind = "admin"
							case tk.Replication:
								kind = "replication"
							}
							t.row(tk.ID, tk.Name, tk.Project, kind, timeH(tk.Created), tk.Revoked)
						}
						return t.flush()
					})
				},
			},
			{
				Name: "revoke", Usage: "revoke a token", ArgsUsage: "TOKEN-ID",
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "TOKEN-ID"); err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.Do(c.Context, "DELETE", "/v1/tokens/"+c.Args().First(), nil, nil, nil)
				},
			},
		},
	}
}
