package blockstore

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func firstDataHash(t *testing.T, s *Store, id MapID) Hash {
	t.Helper()
	for i := int64(0); ; i++ {
		h, err := s.BlockHash(id, i)
		if err != nil {
			t.Fatal(err)
		}
		if !h.IsZero() {
			return h
		}
	}
}

// TestScrubBetweenDamageCheckAndHeader: a scrub that removes a damaged
// block the committing map refers to, starting between Commit's damage
// check and its header, waits for the header: the map commits (as it was
// when checked), scrub then names it damaged, and its removal stamp
// predates the removal, so a CBT child looks the parent's blocks up and
// stores the lost one again. (Scrub used to remove the block in between:
// the map committed as intact with the block missing, and CBT children
// took it from there without a lookup.)
func TestScrubBetweenDamageCheckAndHeader(t *testing.T) {
	ctx := context.Background()
	s := newHookedStore(t, Options{BlockSize: 4096})
	data := randomDisk(201, 1<<20)
	a := ingestCommit(t, s.Store, data, MapID{})
	h := firstDataHash(t, s.Store, a.ID)
	p, err := s.Ingest(ctx, memSource{data}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	corruptBlock(t, s.Store, h)
	scrubbed := make(chan ScrubReport, 1)
	s.at(HookCommitSynced, func() {
		go func() {
			rep, err := s.Scrub(ctx, nil)
			if err != nil {
				t.Error(err)
			}
			scrubbed <- rep
		}()
		time.Sleep(200 * time.Millisecond) // time for the scrub to remove what it may
	})
	err = s.Commit(ctx, []*PendingMap{p}, nil)
	if !s.disarm() {
		t.Fatal("hook did not fire")
	}
	rep := <-scrubbed
	switch {
	case errors.Is(err, ErrDamagedDuringBackup):
		p.Abort(ctx)
	case err != nil:
		t.Fatal(err)
	default:
		if !slices.Contains(rep.DamagedMaps, p.Info.ID) {
			t.Fatalf("map %s committed while scrub removed its block %s, and scrub does not name it damaged: %+v", p.Info.ID, h, rep)
		}
		var reads atomic.Int64
		c, err := s.Ingest(ctx, changedSource{memSource{data}, nil, &reads}, IngestOptions{Parent: &p.Info})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(ctx, []*PendingMap{c}, nil); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.HasBlock(h); !ok {
			t.Fatalf("CBT child %s of a damaged parent committed without block %s", c.Info.ID, h)
		}
	}
	ingestCommit(t, s.Store, data, MapID{}) // repairs a and p before the invariant check
}

// An import's Commit must not clear the damage log while an ingest
// that needs it is still pending (the import's map is not in s.pending).
func TestImportCommitKeepsDamageLog(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{BlockSize: 4096})
	src := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(202, 1<<20)
	a := ingestCommit(t, s, data, MapID{})
	h := firstDataHash(t, s, a.ID)
	p, err := s.Ingest(ctx, memSource{data}, IngestOptions{})
	if err != nil || p.Info.Stats.NewBlocks != 0 {
		t.Fatalf("ingest: %v %+v", err, p.Info.Stats)
	}
	corruptBlock(t, s, h)
	if _, err := s.Scrub(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// An unrelated replica arrives and commits.
	other := ingestCommit(t, src, randomDisk(203, 256<<10), MapID{})
	im := replicateInto(t, src, s, other.ID, func(int) bool { return true })
	pm, err := im.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []*PendingMap{pm}, nil); err != nil {
		t.Fatal(err)
	}
	err = s.Commit(ctx, []*PendingMap{p}, nil)
	present, _ := s.HasBlock(h)
	if !errors.Is(err, ErrDamagedDuringBackup) {
		t.Fatalf("commit after an import's commit: err=%v; block present=%v (want ErrDamagedDuringBackup)", err, present)
	}
	p.Abort(ctx)
	ingestCommit(t, s, data, MapID{}) // repairs a before the invariant check
}

// Scrub between an import's Finish and its Commit: with no
// ingest pending, recordDamage records nothing, and Commit accepts it.
func TestScrubBetweenImportFinishAndCommit(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{BlockSize: 4096})
	src := newTestStore(t, Options{BlockSize: 4096})
	info := ingestCommit(t, src, randomDisk(204, 1<<20), MapID{})
	im := replicateInto(t, src, s, info.ID, func(int) bool { return true })
	pm, err := im.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := firstDataHash(t, src, info.ID)
	corruptBlock(t, s, h)
	if rep, err := s.Scrub(ctx, nil); err != nil || len(rep.Damaged) != 1 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	err = s.Commit(ctx, []*PendingMap{pm}, nil)
	present, _ := s.HasBlock(h)
	if !errors.Is(err, ErrDamagedDuringBackup) {
		t.Fatalf("import %s committing without block %s (present %v): %v, want ErrDamagedDuringBackup", pm.Info.ID, h, present, err)
	}
	pm.Abort(ctx)
}

// An import dedupes against garbage (a deleted backup's
// block) that GC already failed to mark: imports hold nothing in the GC
// gate, so the sweep removes the block after Finish found it present.
func TestImportVsGCSweep(t *testing.T) {
	ctx := context.Background()
	s := newHookedStore(t, Options{BlockSize: 4096})
	src := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(205, 1<<20)
	old := ingestCommit(t, s.Store, data, MapID{}) // an earlier replica, deleted by retention
	if err := deleteMapQuiet(s.Store, old.ID); err != nil {
		t.Fatal(err)
	}
	info := ingestCommit(t, src, data, MapID{})
	im, err := s.BeginImport(ctx, info.Size)
	if err != nil {
		t.Fatal(err)
	}
	var pm *PendingMap
	s.at(HookGCMarked, func() {
		// The import's segments arrive after GC read its (empty) file.
		err := src.MapHashes(ctx, info.ID, func(seg int64, hs []Hash) error { return im.WriteSegment(seg, hs) })
		if err == nil {
			putMissing(t, src, im, func(int) bool { return true })
			pm, err = im.Finish(ctx)
		}
		if err == nil {
			err = s.Commit(ctx, []*PendingMap{pm}, nil)
		}
		if err != nil {
			t.Errorf("import: %v", err)
		}
	})
	st, err := s.GC(ctx)
	if !s.disarm() || err != nil || pm == nil {
		t.Fatalf("gc: %v", err)
	}
	t.Logf("gc: freed %d blocks, kept in flight %d", st.FreedBlocks, st.KeptInFlight)
	h := firstDataHash(t, s.Store, pm.Info.ID)
	if ok, _ := s.HasBlock(h); !ok {
		t.Fatalf("committed import %s lost block %s to GC (freed %d blocks)", pm.Info.ID, h, st.FreedBlocks)
	}
}
