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
	return &cli.Command{
		Name: name, Usage: usage,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "no-wait", Usage: "start the job and return"}, jsonFlag},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			var j catalog.Job
			if err := cl.Do(c.Context, "POST", "/v1/"+name, nil, nil, &j); err != nil {
				return err
			}
			if !c.Bool("no-wait") {
				if j, err = waitJob(c, cl, j.ID); err != nil {
					return err
				}
			}
			return show(c, j, func(w io.Writer) error { return printJob(w, j) })
		},
	}
}

func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "the block store",
		Subcommands: []*cli.Command{rebuildIndexCommand(), {
			Name: "stats", Usage: "logical and stored bytes, dedupe and compression ratios, per project", Flags: []cli.Flag{jsonFlag},
			Action: func(c *cli.Context) error {
				cl, err := client(c)
				if err != nil {
					return err
				}
				var st api.StoreStats
				if err := cl.Do(c.Context, "GET", "/v1/store/stats", nil, nil, &st); err != nil {
					return err
				}
				return show(c, st, func(w io.Writer) error {
					if st.Blocks > 0 || st.DiskBytes > 0 {
						fmt.Fprintf(w, "blocks:       %d of %s\nunique data:  %s\nstored:       %s (compression %.2fx) in %d packs of %s\non disk:      %s allocated (packs, block maps, index and catalog)\ndedupe:       %.2fx\n\n",
							st.Blocks, bytesH(int64(st.BlockSize)), bytesH(st.RawBytes), bytesH(st.StoredBytes), st.CompressionRatio, st.Packs, bytesH(st.PackBytes), bytesH(st.DiskBytes), st.DedupeRatio)
					}
					t := newTable(w, "PROJECT", "BACKUPS", "LOGICAL", "DATA", "ADDED")
					for _, p := range st.Projects {
						t.row(p.Project, p.Backups, bytesH(p.LogicalBytes), bytesH(p.DataBytes), bytesH(p.AddedBytes))
					}
					return t.flush()
				})
			},
		}},
	}
}
