package catalog

import (
	"path/filepath"
	"testing"
	"time"

	"csbs/blockstore"
)

// BenchmarkUpdate is the cost of one acknowledged (synced) catalog write
// on the file system of the temp dir.
func BenchmarkUpdate(b *testing.B) {
	s, err := blockstore.Open(filepath.Join(b.TempDir(), "store"), blockstore.Options{BlockSize: 4096})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c := New(s.KV(), Options{})
	var tok Token
	if err := c.Update(func(tx *Txn) error {
		var err error
		tok, _, err = tx.CreateToken("", "bench", time.Now())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := c.Update(func(tx *Txn) error { return tx.PutToken(tok) }); err != nil {
			b.Fatal(err)
		}
	}
}
