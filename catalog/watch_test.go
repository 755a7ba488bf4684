package catalog

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestWatchMounts: every commit that changes the FUSE tree is reported
// once the watch has returned (creation, a status change that takes a
// backup out of the tree, deletion, a new project), and commits that do
// not change it are not.
func TestWatchMounts(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan MountChange, 100)
	if err := f.c.WatchMounts(ctx, func(cs []MountChange) {
		for _, c := range cs {
			got <- c
		}
	}); err != nil {
		t.Fatal(err)
	}
	expect := func(step string, want ...MountChange) {
		t.Helper()
		var have []MountChange
		timeout := time.After(5 * time.Second)
		for len(have) < len(want) {
			select {
			case c := <-got:
				have = append(have, c)
			case <-timeout:
				t.Fatalf("%s: changes %+v, want %+v", step, have, want)
			}
		}
		select {
		case c := <-got:
			t.Fatalf("%s: unexpected change %+v", step, c)
		case <-time.After(50 * time.Millisecond):
		}
		for _, w := range want {
			if !slices.Contains(have, w) {
				t.Fatalf("%s: changes %+v, want %+v", step, have, want)
			}
		}
	}
	b := f.putBackup(t, f.p1.ID, f.web, "new", t0.Add(99*time.Hour), TypeEnhanced)
	expect("create", MountChange{Project: f.p1.ID, Server: "web", Backup: "new"})
	f.putBackup(t, f.p1.ID, f.web, "common", t0, TypeCommon)
	expect("a Common backup")
	b.Protected = true
	if err := f.c.Update(func(tx *Txn) error { return tx.PutBackup(b) }); err != nil {
		t.Fatal(err)
	}
	expect("protection changes nothing shown")
	b.Status = StatusDeleting
	if err := f.c.Update(func(tx *Txn) error { return tx.PutBackup(b) }); err != nil {
		t.Fatal(err)
	}
	expect("deleting", MountChange{Project: f.p1.ID, Server: "web", Backup: "new"})
	if err := f.c.Update(func(tx *Txn) error { return tx.DeleteBackup(f.backups[0]) }); err != nil {
		t.Fatal(err)
	}
	expect("delete", MountChange{Project: f.p1.ID, Server: "web", Backup: "b0"})
	var p3 Project
	if err := f.c.Update(func(tx *Txn) (err error) { p3, err = tx.CreateProject("p3", t0); return err }); err != nil {
		t.Fatal(err)
	}
	expect("project", MountChange{Project: p3.ID, ProjectName: "p3"})
}
