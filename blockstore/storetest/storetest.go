// Package storetest is the conformance suite every blockstore.PackStore
// passes: the same tests, run against the local pack directory and the
// object-store backend. Part of it exercises the PackStore contract
// directly (put, ranged and concurrent reads, missing packs, delete,
// list, reopen, request counting); the rest runs a whole block store on
// the backend (ingest, commit, read back, dedupe, GC that deletes and
// repacks, scrub that finds a damaged block, rebuild-index), checking
// after each test that every committed map reads back.
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"

	"csbs/blockstore"
)

// OpenFunc returns a handle on the packs at loc, a directory the suite
// made for one test. Calls with the same loc reach the same packs (the
// suite closes one handle before it opens the next); a new loc starts
// empty. A backend that keeps packs elsewhere may use loc to name them
// (a key prefix) and for local files (a cache).
type OpenFunc func(t *testing.T, loc string) blockstore.PackStore

// Run runs the whole suite against the backend open makes.
func Run(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open OpenFunc)
	}{
		{"PutReadRanges", testPutReadRanges},
		{"MissingPack", testMissingPack},
		{"DeleteAndList", testDeleteAndList},
		{"ConcurrentReads", testConcurrentReads},
		{"Reopen", testReopen},
		{"IOCounter", testIOCounter},
		{"StoreIngestReadBack", testStoreIngestReadBack},
		{"StoreConcurrentVolumeReads", testStoreConcurrentVolumeReads},
		{"StoreGCDeletesAndRepacks", testStoreGC},
		{"StoreScrubFindsDamage", testStoreScrub},
		{"StoreRebuildIndex", testStoreRebuildIndex},
		{"StoreRebuildIndexAfterLostIndex", testStoreRebuildLostIndex},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// stage writes b as a staged pack file and returns its path.
func stage(t *testing.T, b []byte) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "staged-*.pack")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func put(t *testing.T, ps blockstore.PackStore, num uint64, b []byte) {
	t.Helper()
	staged := stage(t, b)
	if err := ps.Put(context.Background(), num, staged, int64(len(b))); err != nil {
		t.Fatalf("put pack %d: %v", num, err)
	}
}

func openPacks(t *testing.T, open OpenFunc, loc string) blockstore.PackStore {
	t.Helper()
	ps := open(t, loc)
	t.Cleanup(func() { ps.Close() })
	return ps
}

func testPutReadRanges(t *testing.T, open OpenFunc) {
	ps := openPacks(t, open, t.TempDir())
	ctx := context.Background()
	data := randBytes(1, 3<<20+12345)
	staged := stage(t, data)
	if err := ps.Put(ctx, 7, staged, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(staged); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the staged file is still at %s after Put (err %v): Put must consume it", staged, err)
	}
	size := int64(len(data))
	for _, rg := range []struct {
		name    string
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{"first byte", 0, 1, 1, false},
		{"header", 0, 24, 24, false},
		{"a block inside", 1 << 20, 64 << 10, 64 << 10, false},
		{"across a MiB boundary", 1<<20 - 100, 300, 300, false},
		{"large", 12345, 2 << 20, 2 << 20, false},
		{"the last bytes", size - 32, 32, 32, false},
		{"whole pack", 0, int(size), int(size), false},
		{"across the end", size - 10, 100, 10, true},
		{"at the end", size, 10, 0, true},
	} {
		t.Run(rg.name, func(t *testing.T) {
			for _, hint := range []blockstore.ReadHint{blockstore.ReadDefault, blockstore.ReadOnce, blockstore.ReadDefault} {
				p := make([]byte, rg.n)
				n, err := ps.ReadAt(blockstore.WithReadHint(ctx, hint), 7, p, rg.off)
				if n != rg.wantN {
					t.Fatalf("hint %d: read %d bytes at %d: got %d, want %d (err %v)", hint, rg.n, rg.off, n, rg.wantN, err)
				}
				if rg.wantEOF && !errors.Is(err, io.EOF) {
					t.Fatalf("hint %d: read past the end: err %v, want io.EOF", hint, err)
				}
				if !rg.wantEOF && err != nil {
					t.Fatalf("hint %d: %v", hint, err)
				}
				if !bytes.Equal(p[:n], data[rg.off:rg.off+int64(n)]) {
					t.Fatalf("hint %d: bytes at %d differ", hint, rg.off)
				}
			}
		})
	}
}

func testMissingPack(t *testing.T, open OpenFunc) {
	ps := openPacks(t, open, t.TempDir())
	ctx := context.Background()
	put(t, ps, 1, randBytes(2, 4096))
	for _, hint := range []blockstore.ReadHint{blockstore.ReadDefault, blockstore.ReadOnce} {
		_, err := ps.ReadAt(blockstore.WithReadHint(ctx, hint), 2, make([]byte, 10), 0)
		if !errors.Is(err, blockstore.ErrPackNotFound) {
			t.Errorf("hint %d: read of a pack never put: %v, want ErrPackNotFound", hint, err)
		}
	}
}

func listAll(t *testing.T, ps blockstore.PackStore) map[uint64]int64 {
	t.Helper()
	got := map[uint64]int64{}
	err := ps.List(context.Background(), func(num uint64, size int64) error {
		if _, dup := got[num]; dup {
			return fmt.Errorf("pack %d listed twice", num)
		}
		got[num] = size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func testDeleteAndList(t *testing.T, open OpenFunc) {
	ps := openPacks(t, open, t.TempDir())
	ctx := context.Background()
	want := map[uint64]int64{}
	for i, num := range []uint64{1, 2, 255, 256, 257, 1 << 40, 1<<64 - 1} {
		b := randBytes(uint64(10+i), 1000+i*37)
		put(t, ps, num, b)
		want[num] = int64(len(b))
	}
	if got := listAll(t, ps); !mapsEqual(got, want) {
		t.Fatalf("list: got %v, want %v", got, want)
	}
	// Read a pack (filling any cache), then delete it.
	if _, err := ps.ReadAt(ctx, 256, make([]byte, 100), 0); err != nil {
		t.Fatal(err)
	}
	for _, num := range []uint64{256, 1 << 40} {
		if err := ps.Delete(ctx, num); err != nil {
			t.Fatal(err)
		}
		delete(want, num)
		if _, err := ps.ReadAt(ctx, num, make([]byte, 100), 0); !errors.Is(err, blockstore.ErrPackNotFound) {
			t.Errorf("read of deleted pack %d: %v, want ErrPackNotFound", num, err)
		}
	}
	if err := ps.Delete(ctx, 256); err != nil {
		t.Errorf("deleting a deleted pack: %v, want nil", err)
	}
	if err := ps.Delete(ctx, 99); err != nil {
		t.Errorf("deleting a pack never put: %v, want nil", err)
	}
	if got := listAll(t, ps); !mapsEqual(got, want) {
		t.Fatalf("list after delete: got %v, want %v", got, want)
	}
	// An error from fn stops the listing and comes back.
	stop := errors.New("stop")
	if err := ps.List(ctx, func(uint64, int64) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("List returned %v, want the callback's error", err)
	}
}

func mapsEqual(a, b map[uint64]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func testConcurrentReads(t *testing.T, open OpenFunc) {
	ps := openPacks(t, open, t.TempDir())
	packs := map[uint64][]byte{}
	for num := uint64(1); num <= 3; num++ {
		packs[num] = randBytes(100+num, 2<<20+int(num)*4099)
		put(t, ps, num, packs[num])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 5))
			ctx := context.Background()
			if g%4 == 3 {
				ctx = blockstore.WithReadHint(ctx, blockstore.ReadOnce)
			}
			for range 60 {
				num := uint64(r.IntN(3) + 1)
				data := packs[num]
				n := r.IntN(96<<10) + 1
				off := r.Int64N(int64(len(data) - n))
				if g%2 == 0 { // walk in order, like a restore
					off = int64(r.IntN(8)) * int64(len(data)/8)
					n = min(n, len(data)-int(off))
				}
				p := make([]byte, n)
				if _, err := ps.ReadAt(ctx, num, p, off); err != nil {
					errs <- fmt.Errorf("pack %d at %d: %w", num, off, err)
					return
				}
				if !bytes.Equal(p, data[off:off+int64(n)]) {
					errs <- fmt.Errorf("pack %d at %d: bytes differ", num, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testReopen(t *testing.T, open OpenFunc) {
	loc := t.TempDir()
	ps := open(t, loc)
	data := randBytes(3, 1<<20+7)
	put(t, ps, 42, data)
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
	ps = openPacks(t, open, loc)
	p := make([]byte, len(data))
	if _, err := ps.ReadAt(context.Background(), 42, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data) {
		t.Fatal("pack differs after reopen")
	}
	if got := listAll(t, ps); !mapsEqual(got, map[uint64]int64{42: int64(len(data))}) {
		t.Fatalf("list after reopen: %v", got)
	}
}

func testIOCounter(t *testing.T, open OpenFunc) {
	ps := openPacks(t, open, t.TempDir())
	var c blockstore.IOCounter
	ctx := blockstore.WithIOCounter(context.Background(), &c)
	data := randBytes(4, 300<<10)
	if err := ps.Put(ctx, 5, stage(t, data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Puts != 1 || st.PutBytes != int64(len(data)) {
		t.Errorf("after one Put of %d bytes: %+v", len(data), st)
	}
	p := make([]byte, 1000)
	if _, err := ps.ReadAt(blockstore.WithReadHint(ctx, blockstore.ReadOnce), 5, p, 5000); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Gets < 1 || st.GetBytes < int64(len(p)) {
		t.Errorf("after a read of %d bytes: %+v, want at least one GET of them", len(p), st)
	}
	// Another job's counter is not touched.
	var other blockstore.IOCounter
	before := c.Stats()
	if _, err := ps.ReadAt(blockstore.WithIOCounter(blockstore.WithReadHint(context.Background(), blockstore.ReadOnce), &other), 5, p, 0); err != nil {
		t.Fatal(err)
	}
	if c.Stats() != before {
		t.Errorf("a read under another counter changed this one: %+v -> %+v", before, c.Stats())
	}
}

// Whole-store tests.

const (
	testBlock = 4096
	testPack  = 64 << 10
)

// openStore opens a block store in a fresh directory on the packs at
// loc, and checks when the test ends that every committed map reads
// back and verifies.
func openStore(t *testing.T, open OpenFunc, loc string) *blockstore.Store {
	t.Helper()
	s, err := blockstore.Open(t.TempDir(), blockstore.Options{
		BlockSize: testBlock, PackSize: testPack, MinFree: 1 << 20, Workers: 2, Packs: open(t, loc),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			checkMaps(t, s)
		}
		s.Close()
	})
	return s
}

func checkMaps(t *testing.T, s *blockstore.Store) {
	t.Helper()
	maps, err := s.ListMaps()
	if err != nil {
		t.Fatalf("invariant: list maps: %v", err)
	}
	for _, m := range maps {
		v, err := s.OpenVolume(m.ID)
		if err != nil {
			t.Fatalf("invariant: open map %s: %v", m.ID, err)
		}
		if _, err := io.Copy(io.Discard, io.NewSectionReader(v, 0, v.Size())); err != nil {
			t.Fatalf("invariant: map %s does not read back: %v", m.ID, err)
		}
		v.Close()
	}
}

// disk is an in-memory source.
type disk []byte

func (d disk) Size() int64 { return int64(len(d)) }
func (d disk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(d)) {
		return 0, io.EOF
	}
	n := copy(p, d[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// makeDisk returns blocks of random data (seeded per block, so two disks
// with the same seeds share blocks) with every fifth block zero.
func makeDisk(seeds []uint64) disk {
	d := make(disk, 0, len(seeds)*testBlock)
	for i, s := range seeds {
		if i%5 == 4 {
			d = append(d, make([]byte, testBlock)...)
			continue
		}
		d = append(d, randBytes(s, testBlock)...)
	}
	return d
}

func seeds(from, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(from + i)
	}
	return out
}

func backup(t *testing.T, s *blockstore.Store, d disk) blockstore.MapInfo {
	t.Helper()
	ctx := context.Background()
	pm, err := s.Ingest(ctx, d, blockstore.IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []*blockstore.PendingMap{pm}, nil); err != nil {
		t.Fatal(err)
	}
	return pm.Info
}

func readBack(t *testing.T, s *blockstore.Store, id blockstore.MapID, want disk) {
	t.Helper()
	v, err := s.OpenVolume(id)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, v.Size())
	if _, err := v.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read map %s: %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("map %s reads back different bytes", id)
	}
}

func deleteMap(t *testing.T, s *blockstore.Store, id blockstore.MapID) {
	t.Helper()
	if err := s.KV().Badger().Update(func(txn *badger.Txn) error { return blockstore.DeleteMapTxn(kv.NewTxn(txn), id) }); err != nil {
		t.Fatal(err)
	}
	if err := s.PurgeMap(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

func testStoreIngestReadBack(t *testing.T, open OpenFunc) {
	s := openStore(t, open, t.TempDir())
	d := makeDisk(seeds(0, 200))
	d = append(d, d[:50*testBlock]...) // repeats inside one disk
	a := backup(t, s, d)
	if a.Stats.NewBlocks != 160 {
		t.Errorf("first backup stored %d new blocks, want 160", a.Stats.NewBlocks)
	}
	readBack(t, s, a.ID, d)
	b := backup(t, s, d)
	if b.Stats.NewBlocks != 0 {
		t.Errorf("second backup of the same disk stored %d new blocks, want 0 (dedupe)", b.Stats.NewBlocks)
	}
	readBack(t, s, b.ID, d)
	st, err := s.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 160 || st.Packs < 2 {
		t.Errorf("stats: %d blocks in %d packs, want 160 blocks in several packs", st.Blocks, st.Packs)
	}
}

func testStoreConcurrentVolumeReads(t *testing.T, open OpenFunc) {
	s := openStore(t, open, t.TempDir())
	d := makeDisk(seeds(1000, 300))
	info := backup(t, s, d)
	v, err := s.OpenVolume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 100 {
				off := r.Int64N(int64(len(d)) - 20000)
				p := make([]byte, r.IntN(20000)+1)
				if _, err := v.ReadAtContext(context.Background(), p, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(p, d[off:off+int64(len(p))]) {
					errs <- fmt.Errorf("bytes at %d differ", off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testStoreGC(t *testing.T, open OpenFunc) {
	loc := t.TempDir()
	s := openStore(t, open, loc)
	ctx := context.Background()
	// a: blocks 0..199; b: blocks 0..9 and 1000..1189. Deleting a leaves
	// the packs of blocks 16..199 dead (deleted) and the first pack (16
	// blocks, 8 of them b's) half dead (repacked).
	da := makeDisk(seeds(0, 200))
	db := makeDisk(append(seeds(0, 10), seeds(1000, 190)...))
	a := backup(t, s, da)
	b := backup(t, s, db)
	before := listAll(t, packsOf(s))
	deleteMap(t, s, a.ID)
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FreedBlocks != 152 {
		t.Errorf("GC freed %d blocks, want 152 (the deleted backup's 160 data blocks but the 8 that b shares)", st.FreedBlocks)
	}
	if st.PacksDeleted == 0 || st.PacksRepacked == 0 {
		t.Errorf("GC deleted %d and repacked %d packs, want both", st.PacksDeleted, st.PacksRepacked)
	}
	readBack(t, s, b.ID, db)
	after := listAll(t, packsOf(s))
	var beforeBytes, afterBytes int64
	for _, n := range before {
		beforeBytes += n
	}
	for _, n := range after {
		afterBytes += n
	}
	if afterBytes >= beforeBytes*3/4 {
		t.Errorf("the pack store holds %d bytes after GC, %d before: want well under 3/4", afterBytes, beforeBytes)
	}
	stats, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Packs != int64(len(after)) {
		t.Errorf("the pack table has %d packs, the pack store %d: GC left orphans or lost packs", stats.Packs, len(after))
	}
	// A second GC finds nothing.
	st, err = s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FreedBlocks != 0 || st.PacksDeleted != 0 || st.OrphanPacks != 0 {
		t.Errorf("second GC: %+v, want nothing to do", st)
	}
}

func packsOf(s *blockstore.Store) blockstore.PackStore { return s.Packs() }

// corruptPack replaces pack num by a copy with one byte of its first
// block's value flipped: packs are immutable, so damage comes in as a
// delete and a new put of the same number, which every backend allows.
func corruptPack(t *testing.T, ps blockstore.PackStore, num uint64, size int64) {
	t.Helper()
	ctx := blockstore.WithReadHint(context.Background(), blockstore.ReadOnce)
	b := make([]byte, size)
	if _, err := ps.ReadAt(ctx, num, b, 0); err != nil {
		t.Fatal(err)
	}
	const firstValue = 24 + 32 + 4 // header, then the first record's hash and length
	b[firstValue+9] ^= 0x55
	if err := ps.Delete(ctx, num); err != nil {
		t.Fatal(err)
	}
	put(t, ps, num, b)
}

func testStoreScrub(t *testing.T, open OpenFunc) {
	s := openStore(t, open, t.TempDir())
	ctx := context.Background()
	good := makeDisk(seeds(5000, 10))
	d := makeDisk(seeds(0, 40))
	info := backup(t, s, d)
	packs := listAll(t, s.Packs())
	var first uint64 = 1<<64 - 1
	for num := range packs {
		first = min(first, num)
	}
	corruptPack(t, s.Packs(), first, packs[first])
	other := backup(t, s, good)
	rep, err := s.Scrub(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || len(rep.DamagedMaps) != 1 || rep.DamagedMaps[0] != info.ID {
		t.Fatalf("scrub: %d damaged blocks, maps %v; want 1 block of map %s", len(rep.Damaged), rep.DamagedMaps, info.ID)
	}
	if want := blockstore.HashBlock(d[:testBlock]); rep.Damaged[0] != want {
		t.Errorf("scrub named block %s, want the first block %s", rep.Damaged[0], want)
	}
	readBack(t, s, other.ID, good)
	// rebuild-index does not bring the damaged copy back.
	if st, err := s.RebuildIndex(ctx); err != nil || st.BlocksAdded != 0 || st.BlocksLeftOut != 1 {
		t.Fatalf("rebuild-index after scrub: %+v, %v; want the damaged block left out", st, err)
	}
	// A new backup of the same data stores the block again: repaired.
	again := backup(t, s, d)
	if again.Stats.NewBlocks != 1 {
		t.Errorf("backup after scrub stored %d new blocks, want 1 (the damaged one)", again.Stats.NewBlocks)
	}
	rep, err = s.Scrub(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 0 || len(rep.DamagedMaps) != 0 {
		t.Errorf("scrub after the repair: %+v", rep)
	}
	deleteMap(t, s, info.ID) // it still names the damaged block
}

func testStoreRebuildIndex(t *testing.T, open OpenFunc) {
	s := openStore(t, open, t.TempDir())
	ctx := context.Background()
	d := makeDisk(seeds(0, 120))
	info := backup(t, s, d)
	// Forget the newest packs and their blocks, as a Badger restored
	// from a copy older than them would.
	table := map[uint64]bool{}
	for num := range listAll(t, s.Packs()) {
		table[num] = true
	}
	var newest []uint64
	for num := range table {
		newest = append(newest, num)
	}
	slices.Sort(newest)
	newest = newest[len(newest)/2:]
	forgotten := map[uint64]bool{}
	for _, num := range newest {
		forgotten[num] = true
	}
	var dropped int64
	err := s.KV().Badger().Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("i/")})
		var keys [][]byte
		for it.Rewind(); it.Valid(); it.Next() {
			var num uint64
			if err := it.Item().Value(func(v []byte) error { num = binary.BigEndian.Uint64(v); return nil }); err != nil {
				return err
			}
			if forgotten[num] {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
		}
		it.Close()
		for _, k := range keys {
			if err := txn.Delete(k); err != nil {
				return err
			}
			dropped++
		}
		for _, num := range newest {
			if err := txn.Delete(binary.BigEndian.AppendUint64([]byte("p/"), num)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if dropped == 0 {
		t.Fatal("the newest packs hold no block")
	}
	st, err := s.RebuildIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlocksAdded != dropped || st.BlocksKept != 96-dropped || st.PacksAdded != int64(len(newest)) || len(st.Unreadable) != 0 || st.BlocksLeftOut != 0 {
		t.Errorf("rebuild: %+v; want %d blocks and %d packs added, %d kept", st, dropped, len(newest), 96-dropped)
	}
	readBack(t, s, info.ID, d)
	// Rebuilding again adds nothing.
	st, err = s.RebuildIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlocksAdded != 0 || st.BlocksRepointed != 0 || st.PacksAdded != 0 {
		t.Errorf("second rebuild: %+v, want nothing added", st)
	}
	// Blocks GC swept stay out.
	deleteMap(t, s, info.ID)
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	keep := backup(t, s, makeDisk(seeds(0, 3)))
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	st, err = s.RebuildIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlocksAdded != 0 {
		t.Errorf("rebuild after GC: %+v; want garbage left out", st)
	}
	readBack(t, s, keep.ID, makeDisk(seeds(0, 3)))
}

func testStoreRebuildLostIndex(t *testing.T, open OpenFunc) {
	loc := t.TempDir()
	s, err := blockstore.Open(t.TempDir(), blockstore.Options{
		BlockSize: testBlock, PackSize: testPack, MinFree: 1 << 20, Workers: 2, Packs: open(t, loc),
	})
	if err != nil {
		t.Fatal(err)
	}
	d := makeDisk(seeds(0, 150))
	backup(t, s, d)
	listed := listAll(t, s.Packs())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A new index (Badger lost) on the same packs.
	s2 := openStore(t, open, loc)
	ctx := context.Background()
	st, err := s2.RebuildIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksAdded != int64(len(listed)) || st.BlocksAdded != 120 {
		t.Fatalf("rebuild on an empty index: %+v; want %d packs and 120 blocks added", st, len(listed))
	}
	top := slices.Max(slices.Collect(func(yield func(uint64) bool) {
		for n := range listed {
			if !yield(n) {
				return
			}
		}
	}))
	if st.NextPack <= top {
		t.Errorf("next pack %d, want above the highest listed pack %d", st.NextPack, top)
	}
	// Every block is found again (dedupe), and new packs get new numbers.
	info := backup(t, s2, d)
	if info.Stats.NewBlocks != 0 {
		t.Errorf("backup after the rebuild stored %d new blocks, want 0", info.Stats.NewBlocks)
	}
	extra := makeDisk(seeds(9000, 40))
	backup(t, s2, extra)
	readBack(t, s2, info.ID, d)
	now := listAll(t, s2.Packs())
	for num, size := range listed {
		if now[num] != size {
			t.Errorf("pack %d changed size %d -> %d after new backups: a pack number was reused", num, size, now[num])
		}
	}
}
