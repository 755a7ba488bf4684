package catalog

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// The free-space check sees every transaction that writes, with its
// class, before the commit; a refusal leaves nothing behind, and a
// transaction that only reads is never refused.
func TestSpaceCheck(t *testing.T) {
	var refuse map[WriteClass]bool
	var asked []WriteClass
	c := newTestCatalog(t, Options{Space: func(w WriteClass) error {
		asked = append(asked, w)
		if refuse[w] {
			return fmt.Errorf("store: %w: 1 MiB free", syscall.ENOSPC)
		}
		return nil
	}})
	create := func(tx *Txn) error { _, err := tx.CreateProject("p1", time.Now()); return err }
	remove := func(tx *Txn) error {
		p, err := tx.ProjectByName("p1")
		if err != nil {
			return err
		}
		return tx.DeleteProject(p)
	}
	read := func(tx *Txn) error { _, err := tx.Projects(); return err }
	exists := func() bool {
		return c.View(func(tx *Txn) error { _, err := tx.ProjectByName("p1"); return err }) == nil
	}
	cases := []struct {
		name    string
		refuse  map[WriteClass]bool
		release bool
		fn      func(*Txn) error
		asked   []WriteClass
		nospace bool
		exists  bool
	}{
		{name: "grow refused", refuse: map[WriteClass]bool{WriteGrow: true}, fn: create, asked: []WriteClass{WriteGrow}, nospace: true},
		{name: "grow allowed", fn: create, asked: []WriteClass{WriteGrow}, exists: true},
		{name: "read on a full disk", refuse: map[WriteClass]bool{WriteGrow: true, WriteRelease: true}, fn: read, exists: true},
		{name: "release below the reserve", refuse: map[WriteClass]bool{WriteGrow: true}, release: true, fn: remove, asked: []WriteClass{WriteRelease}},
		{name: "grow again", fn: create, asked: []WriteClass{WriteGrow}, exists: true},
		{name: "release refused", refuse: map[WriteClass]bool{WriteGrow: true, WriteRelease: true}, release: true, fn: remove, asked: []WriteClass{WriteRelease}, nospace: true, exists: true},
	}
	for _, tc := range cases {
		refuse, asked = tc.refuse, nil
		var err error
		if tc.release {
			err = c.Release(tc.fn)
		} else {
			err = c.Update(tc.fn)
		}
		if errors.Is(err, syscall.ENOSPC) != tc.nospace || (!tc.nospace && err != nil) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if fmt.Sprint(asked) != fmt.Sprint(tc.asked) {
			t.Fatalf("%s: the check was asked for %v, want %v", tc.name, asked, tc.asked)
		}
		if exists() != tc.exists {
			t.Fatalf("%s: project exists %v, want %v", tc.name, !tc.exists, tc.exists)
		}
	}
}
