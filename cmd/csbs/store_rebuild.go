package main

import (
	"github.com/urfave/cli/v2"
)

// rebuildIndexCommand is csbs store rebuild-index: the index from the
// packs' footers (admin).
func rebuildIndexCommand() *cli.Command {
	return jobVerb("rebuild-index", "rebuild the block index from the footers of the packs in the store's backend (admin): after a lost or older index, or to adopt packs; only adds entries, safe beside backups", "/v1/store/rebuild-index")
}
