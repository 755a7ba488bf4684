package blockstore_test

import (
	"testing"

	"csbs/blockstore"
	"csbs/blockstore/storetest"
)

// TestLocalPacksConformance runs the store conformance suite on packs in
// a local directory, the default backend.
func TestLocalPacksConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, loc string) blockstore.PackStore {
		ps, err := blockstore.NewLocalPacks(loc)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	})
}
