package main

import (
	"io"

	"github.com/urfave/cli/v2"

	"csbs/catalog"
)

// rebuildIndexCommand is csbs store rebuild-index: the index from the
// packs' footers (admin).
func rebuildIndexCommand() *cli.Command {
	return &cli.Command{
		Name:  "rebuild-index",
		Usage: "rebuild the block index from the footers of the packs in the store's backend (admin): after a lost or older index, or to adopt packs; only adds entries, safe beside backups",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "no-wait", Usage: "start the job and return"}, jsonFlag},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			var j catalog.Job
			if err := cl.Do(c.Context, "POST", "/v1/store/rebuild-index", nil, nil, &j); err != nil {
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
