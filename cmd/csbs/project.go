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
			verb[api.ProjectView]{
				Name: "create", Usage: "create a project", Args: "NAME", JSON: true,
				Method: "POST", Path: apiPath("/v1/projects"),
				Body:  func(c *cli.Context) (any, error) { return api.CreateProjectRequest{Name: arg(c, 0)}, nil },
				Done:  func(_ *cli.Context, p api.ProjectView) string { return "created project " + p.Name + " (" + p.ID + ")" },
				Quiet: func(p api.ProjectView) string { return p.ID },
			}.command(),
			listing[api.ProjectView]{
				Paged:   true,
				Usage:   "list projects",
				Path:    apiPath("/v1/projects"),
				Columns: []string{"ID", "NAME", "INSTANT RESTORE", "CREATED"},
				Row: func(p api.ProjectView) []any {
					return []any{p.ID, p.Name, instantRestore(p), timeH(p.Created)}
				},
			}.command(),
			verb[api.ProjectView]{
				Name: "show", Usage: "show a project and the host paths its tokens may use", Args: "NAME", JSON: true,
				Examples: `csbs project show team-a
   CSBS_TOKEN=... csbs project show team-a    # a project token shows its own project`,
				Path:  apiPath("/v1/projects/", 0),
				Print: printProject,
			}.command(),
			verb[struct{}]{
				Name: "rm", Usage: "remove an empty project", Args: "NAME",
				Method: "DELETE", Path: apiPath("/v1/projects/", 0),
				Done: func(c *cli.Context, _ struct{}) string { return "removed project " + arg(c, 0) },
			}.command(),
		},
	}
}

func instantRestore(p api.ProjectView) string {
	if p.InstantRestore {
		return "enabled " + timeH(p.IREnabledAt)
	}
	return "disabled"
}

func printProject(w io.Writer, p api.ProjectView) error {
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
		p.ID, p.Name, timeH(p.Created), instantRestore(p), list(h.SourceDirs), list(h.TargetDirs), list(h.MountDirs), list(h.NBDHosts))
	return err
}
