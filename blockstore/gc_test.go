package blockstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

func deleteMap(t *testing.T, s *Store, id MapID) {
	t.Helper()
	if err := s.db.Update(func(txn *badger.Txn) error { return DeleteMapTxn(kv.NewTxn(txn), id) }); err != nil {
		t.Fatal(err)
	}
	if err := s.PurgeMap(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

func TestGCFreesOnlyUnreferencedBlocks(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 16 << 10})
	a := randomDisk(1, 8<<20)
	b := bytes.Clone(a)
	copy(b[4<<20:], randomDisk(2, 2<<20)) // b shares all but ~2 MiB with a
	ma := ingestCommit(t, s, a, MapID{})
	mb := ingestCommit(t, s, b, MapID{})
	st, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.FreedBlocks != 0 {
		t.Fatalf("GC with every map live freed %d blocks", st.FreedBlocks)
	}
	deleteMap(t, s, ma.ID)
	st, err = s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.FreedBlocks == 0 || st.FreedBlocks > ma.Stats.NewBlocks {
		t.Fatalf("freed %d blocks; map a alone had %d", st.FreedBlocks, ma.Stats.NewBlocks)
	}
	if got := readAll(t, s, mb.ID); !bytes.Equal(got, b) {
		t.Fatal("surviving map reads wrong after GC")
	}
	// An orphan left by a crashed ingest (a map file, no header) is collected.
	p, err := s.Ingest(context.Background(), memSource{randomDisk(3, 1<<20)}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	delete(s.pending, p.Info.ID) // as if the process had died
	s.mu.Unlock()
	st, err = s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.OrphanMaps != 1 || st.FreedBlocks == 0 {
		t.Fatalf("orphan not collected: %+v", st)
	}
	assertOnlyMapFilesOf(t, s, mb.ID)
}

func assertOnlyMapFilesOf(t *testing.T, s *Store, ids ...MapID) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.dir, mapsDir))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id.String()+".map"] = true
	}
	for _, e := range ents {
		if !want[e.Name()] {
			t.Errorf("map file left behind: %s", e.Name())
		}
	}
}

// TestGCRacesDedupe is the adversarial interleaving: map A holds data X;
// A is deleted while X is ingested again as B (which dedupes against A's
// blocks) and GC runs in a loop meanwhile. B must read back whole every
// time: GC never sweeps a block an ingest just found stored.
func TestGCRacesDedupe(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096, Workers: 4})
	x := randomDisk(77, 6<<20)
	ctx := context.Background()
	for round := range 15 {
		a := ingestCommit(t, s, x, MapID{})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.GC(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		type result struct {
			p   *PendingMap
			err error
		}
		done := make(chan result, 1)
		go func() {
			p, err := s.Ingest(ctx, memSource{x}, IngestOptions{})
			done <- result{p, err}
		}()
		deleteMap(t, s, a.ID) // while B is being ingested and GC loops
		res := <-done
		close(stop)
		wg.Wait()
		p, ingestErr := res.p, res.err
		if ingestErr != nil {
			t.Fatal(ingestErr)
		}
		if err := s.Commit(ctx, []*PendingMap{p}, nil); err != nil {
			t.Fatal(err)
		}
		v, _ := s.OpenVolume(p.Info.ID)
		got := make([]byte, len(x))
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatalf("round %d: map B lost blocks to GC: %v", round, err)
		}
		if !bytes.Equal(got, x) {
			t.Fatalf("round %d: map B reads wrong", round)
		}
		deleteMap(t, s, p.Info.ID)
	}
}

func TestScrubFindsAndRepairsDamage(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(12, 1<<20)
	m := ingestCommit(t, s, data, MapID{})
	other := ingestCommit(t, s, randomDisk(13, 1<<20), MapID{})
	rep, err := s.Scrub(context.Background(), nil)
	if err != nil || len(rep.Damaged) != 0 || len(rep.DamagedMaps) != 0 {
		t.Fatalf("clean store: %+v %v", rep, err)
	}
	var h Hash
	for i := int64(0); h.IsZero(); i++ {
		h, _ = s.BlockHash(m.ID, i)
	}
	corruptBlock(t, s, h)
	rep, err = s.Scrub(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || rep.Damaged[0] != h || len(rep.DamagedMaps) != 1 || rep.DamagedMaps[0] != m.ID {
		t.Fatalf("scrub report: damaged %v maps %v", rep.Damaged, rep.DamagedMaps)
	}
	if _, err := s.OpenVolume(m.ID); err != nil {
		t.Fatal(err)
	}
	v, _ := s.OpenVolume(m.ID)
	if _, err := v.ReadAt(make([]byte, len(data)), 0); !IsDataError(err) {
		t.Fatalf("read of the damaged map: %v", err)
	}
	// A later backup of the same content stores the block again: repaired.
	again := ingestCommit(t, s, data, MapID{})
	if again.Stats.NewBlocks != 1 {
		t.Fatalf("repair stored %d blocks, want 1", again.Stats.NewBlocks)
	}
	if got := readAll(t, s, m.ID); !bytes.Equal(got, data) {
		t.Fatal("damaged map not repaired")
	}
	rep, err = s.Scrub(context.Background(), nil)
	if err != nil || len(rep.DamagedMaps) != 0 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	_ = other
}

// corruptBlock flips one byte of block h's value in its pack file.
func corruptBlock(t *testing.T, s *Store, h Hash) {
	t.Helper()
	loc, err := s.lookup(h)
	if err != nil {
		t.Fatal(err)
	}
	path := s.packs.(*LocalPacks).path(loc.pack)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	off := int64(loc.off) + int64(loc.len)/2
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	s.cache.drop(h)
}
