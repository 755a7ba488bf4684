package catalog

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"csbs/blockstore"
	"csbs/internal/powerloss"
)

func TestMain(m *testing.M) {
	powerloss.Main()
	os.Exit(m.Run())
}

// A catalog write is durable once acknowledged: the power fails right
// after a token is revoked and a project created, and after the reboot
// the store says the same. Badger runs with SyncWrites=false, so without
// the catalog's sync the revocation would sit in a mapped page and be
// gone (the token usable again).
func TestAcknowledgedWritesSurvivePowerLoss(t *testing.T) {
	disk := powerloss.New(t, 256)
	s, err := blockstore.Open(filepath.Join(disk.Dir, "store"), blockstore.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	c := New(s.KV(), Options{})
	if _, err := c.EnsureIndexes(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var tok Token
	err = c.Update(func(tx *Txn) error {
		var err error
		tok, _, err = tx.CreateToken("", "ci", now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The token's creation is surely on disk (as if made long ago); the
	// question is its revocation.
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	err = c.Release(func(tx *Txn) error {
		tok.Revoked = true
		return tx.PutToken(tok)
	})
	if err != nil {
		t.Fatal(err)
	}
	var p Project
	err = c.Update(func(tx *Txn) error {
		var err error
		p, err = tx.CreateProject("after", now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	img := disk.Cut()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := blockstore.Open(filepath.Join(powerloss.Recover(t, img), "store"), blockstore.Options{BlockSize: 4096})
	if err != nil {
		t.Fatalf("open the store after a power loss: %v", err)
	}
	defer s2.Close()
	c2 := New(s2.KV(), Options{})
	// The indexes are as durable as their objects (same transaction).
	checkCatalog(t, c2)
	err = c2.View(func(tx *Txn) error {
		got, err := tx.Token(tok.ID)
		if err != nil {
			return err
		}
		if !got.Revoked {
			t.Error("a revoked token is valid again after a power loss")
		}
		_, err = tx.ProjectByName(p.Name)
		return err
	})
	if err != nil {
		t.Fatalf("after a power loss: %v", err)
	}
}
