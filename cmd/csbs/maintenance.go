package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"csbs/api"
	"csbs/catalog"
)

// maintenanceCommand runs gc or scrub and waits for the result.
func maintenanceCommand(name, usage string) *cli.Command {
	return jobVerb(name, usage, "/v1/"+name)
}

// jobVerb is a command that starts a store-wide job (gc, scrub,
// rebuild-index) and waits for it unless --no-wait.
func jobVerb(name, usage, path string) *cli.Command {
	return verb[catalog.Job]{
		Name: name, Usage: usage, JSON: true,
		Flags:  []cli.Flag{&cli.BoolFlag{Name: "no-wait", Usage: "start the job and return"}},
		Method: "POST", Path: apiPath(path),
		Then: func(c *cli.Context, cl *api.Client, j catalog.Job) (catalog.Job, error) {
			if c.Bool("no-wait") {
				return j, nil
			}
			return waitJob(c, cl, j.ID)
		},
		Done: func(c *cli.Context, j catalog.Job) string {
			if c.Bool("no-wait") {
				return fmt.Sprintf("started %s job %s (follow it: csbs job wait %s)", name, j.ID, j.ID)
			}
			return fmt.Sprintf("%s job %s %s: %s", name, j.ID, j.State, orDash(j.Note))
		},
		Quiet: jobID,
	}.command()
}

func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "the block store",
		Subcommands: []*cli.Command{
			rebuildIndexCommand(),
			verb[api.StoreStats]{
				Name: "stats", Usage: "logical and stored bytes, dedupe and compression ratios, per project", JSON: true,
				Path:  apiPath("/v1/store/stats"),
				Print: printStoreStats,
			}.command(),
		},
	}
}

func printStoreStats(w io.Writer, st api.StoreStats) error {
	if st.Blocks > 0 || st.DiskBytes > 0 {
		fmt.Fprintf(w, "blocks:       %d of %s\nunique data:  %s\nstored:       %s (compression %.2fx) in %d packs of %s\non disk:      %s allocated (packs, block maps, index and catalog; what du counts)\ndedupe:       %.2fx\n\n",
			st.Blocks, bytesH(int64(st.BlockSize)), bytesH(st.RawBytes), bytesH(st.StoredBytes), st.CompressionRatio, st.Packs, bytesH(st.PackBytes), bytesH(st.DiskBytes), st.DedupeRatio)
	}
	return tableOf([]string{"PROJECT", "BACKUPS", "LOGICAL", "DATA", "ADDED"}, func(p api.ProjectStats) []any {
		return []any{p.Project, p.Backups, bytesH(p.LogicalBytes), bytesH(p.DataBytes), bytesH(p.AddedBytes)}
	}, "")(w, st.Projects)
}
