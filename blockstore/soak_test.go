package blockstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// mutate returns a copy of base with a seeded share of its 4 KiB blocks
// replaced by random ones: backups of data that mostly shares blocks.
func mutate(base []byte, seed uint64, share float64) []byte {
	out := bytes.Clone(base)
	r := rand.New(rand.NewPCG(seed, 99))
	for off := 0; off < len(out); off += 4096 {
		if r.Float64() < share {
			for i := off; i < off+4096 && i < len(out); i++ {
				out[i] = byte(r.Uint32())
			}
		}
	}
	return out
}

func deleteMapQuiet(s *Store, id MapID) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return DeleteMapTxn(kv.NewTxn(txn), id) }); err != nil {
		return err
	}
	return s.PurgeMap(context.Background(), id)
}

// TestSoakGCBesideBackups is the soak that found GC destroying new
// backups (4 of 64 lost on the store before packs): GC runs in a loop
// while 4 lanes each make 16 backups of shared data, and each lane deletes
// its previous backup while the next one is being ingested, so that GC
// keeps finding blocks that only an in-flight backup refers to. Every
// backup is read back and compared before it is deleted, the last ones
// at the end.
func TestSoakGCBesideBackups(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096, Workers: 2, PackSize: 256 << 10})
	ctx := context.Background()
	base := randomDisk(5, 2<<20)
	stop := make(chan struct{})
	var gcs atomic.Int64
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
			gcs.Add(1)
		}
	}()
	var lost atomic.Int64
	check := func(id MapID, want []byte) {
		v, err := s.OpenVolume(id)
		if err != nil {
			t.Error(err)
			return
		}
		got := make([]byte, len(want))
		if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			lost.Add(1)
			t.Logf("backup %s reads back wrong: %v", id, err)
		}
	}
	const lanes, perLane = 4, 16
	var lw sync.WaitGroup
	for lane := range lanes {
		lw.Add(1)
		go func() {
			defer lw.Done()
			var prev MapID
			var prevData []byte
			for k := range perLane {
				data := mutate(base, uint64(lane*1000+k), 0.05)
				p, err := s.Ingest(ctx, memSource{data}, IngestOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				if !prev.IsZero() {
					check(prev, prevData)
					if err := deleteMapQuiet(s, prev); err != nil {
						t.Error(err)
						return
					}
				}
				if err := s.Commit(ctx, []*PendingMap{p}, nil); err != nil {
					t.Error(err)
					return
				}
				prev, prevData = p.Info.ID, data
			}
			check(prev, prevData)
		}()
	}
	lw.Wait()
	close(stop)
	wg.Wait()
	t.Logf("%d GC runs beside %d backups", gcs.Load(), lanes*perLane)
	if lost.Load() > 0 {
		t.Fatalf("%d of %d backups lost blocks to GC", lost.Load(), lanes*perLane)
	}
}

// TestSoakScrubBesideBackups: scrub in a loop while backups of new data
// commit. Before, scrub took its set of present blocks at its start and
// listed maps at its end, so every backup committed in between was
// reported damaged (1340 times in 20 scrubs). No healthy map may be
// reported.
func TestSoakScrubBesideBackups(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096, Workers: 2, PackSize: 256 << 10})
	ctx := context.Background()
	for k := range 2 {
		ingestCommit(t, s, randomDisk(uint64(100+k), 2<<20), MapID{})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for k := range 24 {
			ingestCommit(t, s, randomDisk(uint64(1000+k), 512<<10), MapID{})
		}
	}()
	scrubs, bad := 0, 0
	for running := true; running; scrubs++ {
		select {
		case <-done:
			running = false
		default:
		}
		rep, err := s.Scrub(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		bad += len(rep.DamagedMaps) + len(rep.Damaged)
	}
	t.Logf("%d scrubs beside 24 backups", scrubs)
	if bad > 0 {
		t.Fatalf("scrub reported %d healthy maps or blocks as damaged", bad)
	}
}
