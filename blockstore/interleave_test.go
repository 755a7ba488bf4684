package blockstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// hooked opens a test store whose hook calls whatever the test installs
// with at: the first time the store reaches point p, fn runs in the
// goroutine that reached it (which holds no store lock), and everything
// else waits for it.
type hooked struct {
	*Store
	mu    sync.Mutex
	point HookPoint
	fn    func()
	fired atomic.Bool
}

func newHookedStore(t *testing.T, opts Options) *hooked {
	h := &hooked{}
	opts.Hook = h.call
	h.Store = newTestStore(t, opts)
	return h
}

func (h *hooked) call(p HookPoint) {
	h.mu.Lock()
	if p != h.point || h.fn == nil {
		h.mu.Unlock()
		return
	}
	fn := h.fn
	h.fn = nil
	h.mu.Unlock()
	fn()
	h.fired.Store(true)
}

// at arms the hook for one run of fn at p.
func (h *hooked) at(p HookPoint, fn func()) {
	h.mu.Lock()
	h.point, h.fn = p, fn
	h.mu.Unlock()
	h.fired.Store(false)
}

// disarm reports whether the armed hook ran, and clears it.
func (h *hooked) disarm() bool {
	h.mu.Lock()
	h.fn = nil
	h.mu.Unlock()
	return h.fired.Load()
}

func mustEqual(t *testing.T, s *Store, id MapID, want []byte, what string) {
	t.Helper()
	v, err := s.OpenVolume(id)
	if err != nil {
		t.Fatalf("%s: open map %s: %v", what, id, err)
	}
	got := make([]byte, len(want))
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatalf("%s: map %s: %v", what, id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: map %s reads back wrong bytes", what, id)
	}
}

var gcPoints = []HookPoint{
	HookGCSnapshot, HookGCMarkMap, HookGCMarked, HookGCSweepBatch, HookGCSwept,
	HookGCDeletePack, HookGCRepack, HookGCRepackIndexed, HookGCOrphans,
}

// gcScene is the state every GC interleaving starts from: X was backed
// up as A; P is an ingest of X' (mostly X's blocks, found stored in A)
// that is complete but not committed; A is deleted, so P's pending map is
// the only thing that still needs most of A's blocks. Y was backed up as
// C, then Y' (half of Y's blocks) as D, then C deleted: C's packs are half
// garbage (repacked) and one of A's packs is garbage (deleted), so GC
// passes every point.
type gcScene struct {
	x, xp, y, yp []byte
	p            *PendingMap
	d            MapID
}

func newGCScene(t *testing.T, s *hooked) *gcScene {
	t.Helper()
	sc := &gcScene{x: randomDisk(11, 1<<20), y: randomDisk(12, 1<<20)}
	sc.xp = mutate(sc.x, 13, 0.1)
	sc.yp = mutate(sc.y, 14, 0.5)
	extra := randomDisk(15, 256<<10) // only in A: one pack of pure garbage
	a := ingestCommit(t, s.Store, append(bytes.Clone(sc.x), extra...), MapID{})
	p, err := s.Ingest(context.Background(), memSource{sc.xp}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc.p = p
	if err := deleteMapQuiet(s.Store, a.ID); err != nil {
		t.Fatal(err)
	}
	c := ingestCommit(t, s.Store, sc.y, MapID{})
	sc.d = ingestCommit(t, s.Store, sc.yp, MapID{}).ID
	if err := deleteMapQuiet(s.Store, c.ID); err != nil {
		t.Fatal(err)
	}
	return sc
}

// TestGCInterleavings stops GC at each of its steps and, while it waits
// there, runs another operation through: the pending backup commits; a
// new backup of shared data is made and committed; a backup is deleted;
// the pending backup is aborted; every backup is read. Afterwards every
// committed backup reads back exactly, also after a second GC.
func TestGCInterleavings(t *testing.T) {
	ctx := context.Background()
	type action struct {
		name string
		run  func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte)
	}
	actions := []action{
		{"commit pending", func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte) {
			if err := s.Commit(ctx, []*PendingMap{sc.p}, nil); err != nil {
				t.Error(err)
				return
			}
			committed[sc.p.Info.ID] = sc.xp
			sc.p = nil
		}},
		{"ingest and commit shared data", func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte) {
			data := mutate(sc.xp, 21, 0.05)
			p, err := s.Ingest(ctx, memSource{data}, IngestOptions{})
			if err == nil {
				err = s.Commit(ctx, []*PendingMap{p}, nil)
			}
			if err != nil {
				t.Error(err)
				return
			}
			committed[p.Info.ID] = data
		}},
		{"delete a backup", func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte) {
			if err := deleteMapQuiet(s.Store, sc.d); err != nil {
				t.Error(err)
			}
			delete(committed, sc.d)
		}},
		{"abort pending", func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte) {
			if err := sc.p.Abort(ctx); err != nil {
				t.Error(err)
			}
			sc.p = nil
		}},
		{"read every backup", func(t *testing.T, s *hooked, sc *gcScene, committed map[MapID][]byte) {
			for id, want := range committed {
				mustEqual(t, s.Store, id, want, "read during GC")
			}
		}},
	}
	for _, point := range gcPoints {
		for _, act := range actions {
			t.Run(fmt.Sprintf("%s/%s", point, act.name), func(t *testing.T) {
				s := newHookedStore(t, Options{BlockSize: 4096, Workers: 2, PackSize: 64 << 10, Codec: CodecRaw})
				sc := newGCScene(t, s)
				committed := map[MapID][]byte{sc.d: sc.yp}
				s.at(point, func() { act.run(t, s, sc, committed) })
				st, err := s.GC(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !s.disarm() {
					t.Fatalf("GC never reached %q (stats %+v)", point, st)
				}
				if sc.p != nil {
					if err := s.Commit(ctx, []*PendingMap{sc.p}, nil); err != nil {
						t.Fatal(err)
					}
					committed[sc.p.Info.ID] = sc.xp
				}
				for id, want := range committed {
					mustEqual(t, s.Store, id, want, "after GC")
				}
				if _, err := s.GC(ctx); err != nil {
					t.Fatal(err)
				}
				for id, want := range committed {
					mustEqual(t, s.Store, id, want, "after a second GC")
				}
			})
		}
	}
}

// TestIngestInterleavings stops an ingest (and its commit) at each of its
// steps, deletes the backup whose blocks it is deduplicating against and
// runs a whole GC there. The new backup must read back exactly.
func TestIngestInterleavings(t *testing.T) {
	ctx := context.Background()
	points := []HookPoint{
		HookIngestLookup, HookIngestPackSealed, HookIngestPackIndexed,
		HookIngestSegmentWritten, HookIngestDone, HookCommitSynced, HookCommitDone,
	}
	for _, point := range points {
		t.Run(string(point), func(t *testing.T) {
			s := newHookedStore(t, Options{BlockSize: 4096, Workers: 2, PackSize: 64 << 10, Codec: CodecRaw})
			x := randomDisk(31, 3<<20) // several segments at 4 KiB blocks
			xp := mutate(x, 32, 0.1)
			a := ingestCommit(t, s.Store, x, MapID{})
			var gcErr error
			s.at(point, func() {
				if err := deleteMapQuiet(s.Store, a.ID); err != nil {
					gcErr = err
					return
				}
				_, gcErr = s.GC(ctx)
			})
			p, err := s.Ingest(ctx, memSource{xp}, IngestOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx, []*PendingMap{p}, nil); err != nil {
				t.Fatal(err)
			}
			if !s.disarm() {
				t.Fatalf("ingest never reached %q", point)
			}
			if gcErr != nil {
				t.Fatal(gcErr)
			}
			mustEqual(t, s.Store, p.Info.ID, xp, "after GC inside the ingest")
			if _, err := s.GC(ctx); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, s.Store, p.Info.ID, xp, "after another GC")
		})
	}
}

// TestScrubInterleavings stops scrub at each of its steps and commits
// backups of new data there, with one really damaged backup in the
// store: scrub must report exactly that one.
func TestScrubInterleavings(t *testing.T) {
	ctx := context.Background()
	for _, point := range []HookPoint{HookScrubSnapshot, HookScrubVerified, HookScrubMaps} {
		t.Run(string(point), func(t *testing.T) {
			s := newHookedStore(t, Options{BlockSize: 4096, Workers: 2, PackSize: 64 << 10})
			bad := ingestCommit(t, s.Store, randomDisk(41, 512<<10), MapID{})
			good := ingestCommit(t, s.Store, randomDisk(42, 512<<10), MapID{})
			pending, err := s.Ingest(ctx, memSource{randomDisk(43, 512<<10)}, IngestOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var h Hash
			for i := int64(0); h.IsZero(); i++ {
				h, _ = s.BlockHash(bad.ID, i)
			}
			corruptBlock(t, s.Store, h)
			var fresh MapInfo
			s.at(point, func() {
				if err := s.Commit(ctx, []*PendingMap{pending}, nil); err != nil {
					t.Error(err)
				}
				fresh = ingestCommit(t, s.Store, randomDisk(44, 512<<10), MapID{})
			})
			rep, err := s.Scrub(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !s.disarm() {
				t.Fatalf("scrub never reached %q", point)
			}
			if len(rep.Damaged) != 1 || rep.Damaged[0] != h {
				t.Fatalf("damaged blocks %v, want [%s]", rep.Damaged, h)
			}
			if len(rep.DamagedMaps) != 1 || rep.DamagedMaps[0] != bad.ID {
				t.Fatalf("damaged maps %v, want only %s (good %s, committed during scrub %s and %s)",
					rep.DamagedMaps, bad.ID, good.ID, pending.Info.ID, fresh.ID)
			}
			// Repair: a backup of the same data stores the block again.
			ingestCommit(t, s.Store, randomDisk(41, 512<<10), MapID{})
			mustEqual(t, s.Store, bad.ID, randomDisk(41, 512<<10), "after repair")
		})
	}
}

// TestCommitRefusedAfterScrubRemovedItsBlock: a backup deduplicates
// against a block that scrub then finds damaged and removes. Committing
// it would make a backup damaged from birth; Commit refuses, and the
// backup run again succeeds.
func TestCommitRefusedAfterScrubRemovedItsBlock(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(51, 1<<20)
	a := ingestCommit(t, s, data, MapID{})
	var h Hash
	for i := int64(0); h.IsZero(); i++ {
		h, _ = s.BlockHash(a.ID, i)
	}
	corruptBlock(t, s, h)
	p, err := s.Ingest(ctx, memSource{data}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Info.Stats.NewBlocks != 0 {
		t.Fatalf("ingest stored %d blocks; it should have deduplicated all", p.Info.Stats.NewBlocks)
	}
	if _, err := s.Scrub(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []*PendingMap{p}, nil); !errors.Is(err, ErrDamagedDuringBackup) {
		t.Fatalf("commit of a backup whose block scrub removed: %v", err)
	}
	if err := p.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	again := ingestCommit(t, s, data, MapID{})
	mustEqual(t, s, again.ID, data, "backup run again")
	mustEqual(t, s, a.ID, data, "the damaged backup, repaired")
}
