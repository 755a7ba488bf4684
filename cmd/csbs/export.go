package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "NBD exports of attached backups and instant restores",
		Subcommands: []*cli.Command{
			{
				Name: "ls", Usage: "list exports with ready-to-use URIs", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					cl, err := client(c)
					if err != nil {
						return err
					}
					var es []api.ExportInfo
					if err := cl.Do(c.Context, "GET", "/v1/exports", nil, nil, &es); err != nil {
						return err
					}
					return show(c, es, func(w io.Writer) error { return printExports(w, es) })
				},
			},
		},
	}
}

func printExports(w io.Writer, es []api.ExportInfo) error {
	t := newTable(w, "EXPORT", "KIND", "BACKUP", "DISK", "SIZE", "MODE", "CONNS", "URI")
	for _, e := range es {
		mode := "rw"
		if e.ReadOnly {
			mode = "ro"
		}
		uri := e.URI
		if e.TCPURI != "" {
			uri += " " + e.TCPURI
		}
		t.row(e.Name, e.Kind, e.BackupName, e.Disk, bytesH(e.Size), mode, e.Connections, uri)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(es) == 0 {
		_, err := fmt.Fprintln(w, "(no exports: csbs backup attach BACKUP, or csbs restore start BACKUP --instant)")
		return err
	}
	return nil
}
