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
			verb[api.TokenView]{
				Name: "create", Usage: "create a token; its secret is shown once", JSON: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "a `NAME` for the token", Value: "token"},
					&cli.BoolFlag{Name: "admin", Usage: "create an admin token"},
					&cli.BoolFlag{Name: "replication", Usage: "a replication token: another appliance pulls the project's backups with it (csbs remote add there); it can do nothing else"},
					quietFlag("print only the secret"),
				},
				Method: "POST", Path: apiPath("/v1/tokens"),
				Body: func(c *cli.Context) (any, error) {
					return api.CreateTokenRequest{Name: c.String("name"), Admin: c.Bool("admin"), Replication: c.Bool("replication")}, nil
				},
				Done: func(_ *cli.Context, t api.TokenView) string {
					return fmt.Sprintf("created %s token %s (%s) for project %s", tokenKind(t), t.ID, t.Name, orDash(t.Project))
				},
				Print: func(w io.Writer, t api.TokenView) error {
					_, err := fmt.Fprintf(w, "secret (shown once, store it now; give it to csbs as CSBS_TOKEN or with --token-file, not --token):\n%s\n", t.Secret)
					return err
				},
				Quiet: func(t api.TokenView) string { return t.Secret },
			}.command(),
			listing[api.TokenView]{
				Usage:   "list tokens",
				Path:    apiPath("/v1/tokens"),
				Columns: []string{"ID", "NAME", "PROJECT", "KIND", "CREATED", "REVOKED"},
				Row: func(t api.TokenView) []any {
					return []any{t.ID, t.Name, t.Project, tokenKind(t), timeH(t.Created), t.Revoked}
				},
				Empty: "no tokens in this project (csbs token create --project P --name N makes one)",
			}.command(),
			verb[api.TokenView]{
				Name: "revoke", Usage: "revoke a token", Args: "TOKEN-ID", JSON: true,
				Method: "DELETE", Path: apiPath("/v1/tokens/", 0),
				Done: func(_ *cli.Context, t api.TokenView) string {
					return fmt.Sprintf("revoked token %s (%s): it no longer works", t.ID, t.Name)
				},
			}.command(),
		},
	}
}

// tokenKind is admin, project or replication.
func tokenKind(t api.TokenView) string {
	switch {
	case t.Project == "(admin)":
		return "admin"
	case t.Replication:
		return "replication"
	}
	return "project"
}
