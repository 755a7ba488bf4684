package main

import (
	"io"

	"github.com/urfave/cli/v2"

	"csbs/api"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "NBD exports of attached backups and instant restores",
		Subcommands: []*cli.Command{
			listing[api.ExportInfo]{
				Usage:   "list exports with ready-to-use URIs",
				Path:    apiPath("/v1/exports"),
				Columns: exportColumns, Row: exportRow,
				Empty: "no exports (csbs backup attach BACKUP, or csbs restore start BACKUP --instant)",
			}.command(),
		},
	}
}

var exportColumns = []string{"EXPORT", "KIND", "BACKUP", "DISK", "SIZE", "MODE", "CONNS", "URI"}

func exportRow(e api.ExportInfo) []any {
	mode := "rw"
	if e.ReadOnly {
		mode = "ro"
	}
	uri := e.URI
	if e.TCPURI != "" {
		uri += " " + e.TCPURI
	}
	return []any{e.Name, e.Kind, e.BackupName, e.Disk, bytesH(e.Size), mode, e.Connections, uri}
}

// printExports is the table of export ls, also printed by backup attach.
func printExports(w io.Writer, es []api.ExportInfo) error {
	return tableOf(exportColumns, exportRow, "")(w, es)
}
