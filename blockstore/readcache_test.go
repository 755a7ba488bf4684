package blockstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// cachedVolume stores data (16 KiB blocks, a 1-block memory cache so
// that reads go past it) and opens it with a read cache of cacheBlocks.
func cachedVolume(t *testing.T, data []byte, cacheBlocks int64) *Volume {
	t.Helper()
	s := newTestStore(t, Options{BlockSize: 16 << 10, CacheBytes: 1})
	info := ingestCommit(t, s, data, MapID{})
	v, err := s.OpenVolume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if err := v.EnableReadCache(t.TempDir(), cacheBlocks*(16<<10)); err != nil {
		t.Fatal(err)
	}
	return v
}

// readRandom reads n random ranges (unaligned, across blocks) and
// compares each with want.
func readRandom(t *testing.T, v *Volume, want []byte, seed uint64, n int) {
	r := rand.New(rand.NewPCG(seed, 5))
	buf := make([]byte, 100<<10)
	for range n {
		l := 1 + r.IntN(len(buf))
		off := r.Int64N(int64(len(want) - l))
		if _, err := v.ReadAt(buf[:l], off); err != nil {
			t.Errorf("read %d at %d: %v", l, off, err)
			return
		}
		if !bytes.Equal(buf[:l], want[off:off+int64(l)]) {
			t.Errorf("read %d at %d: wrong bytes", l, off)
			return
		}
	}
}

// TestReadCacheServesRereads: the first load of a block only marks it,
// the second puts it in the file, later reads come from the file, and
// every byte is right, also for reads that are not sector-aligned.
func TestReadCacheServesRereads(t *testing.T) {
	data := randomDisk(1, 4<<20+12345)
	v := cachedVolume(t, data, 1024)
	for pass := range 3 {
		got := readAll(t, v.s, v.info.ID) // a fresh volume: no read cache
		if !bytes.Equal(got, data) {
			t.Fatal("plain read differs")
		}
		buf := make([]byte, len(data))
		if _, err := v.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, data) {
			t.Fatalf("pass %d: read through the cache differs", pass)
		}
		st := v.ReadCacheStats()
		switch pass {
		case 0:
			if st.Inserts != 0 {
				t.Fatalf("first read wrote %d blocks to the cache file", st.Inserts)
			}
		case 1:
			if st.Inserts == 0 {
				t.Fatal("second read cached nothing")
			}
		case 2:
			if st.Hits == 0 {
				t.Fatal("third read never hit the cache file")
			}
		}
	}
	readRandom(t, v, data, 2, 300)
}

// TestReadCacheDetectsDamage: bytes changed in the cache file behind its
// back fail the CRC; the read comes from the store, right.
func TestReadCacheDetectsDamage(t *testing.T) {
	data := randomDisk(3, 1<<20)
	v := cachedVolume(t, data, 1024)
	buf := make([]byte, len(data))
	for range 2 {
		if _, err := v.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if v.ReadCacheStats().Inserts == 0 {
		t.Fatal("nothing cached")
	}
	// Flip a byte in every slot of the file.
	fi, err := v.rc.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(100); off < fi.Size(); off += v.bs {
		b := []byte{0}
		v.rc.f.ReadAt(b, off)
		b[0] ^= 0x40
		v.rc.f.WriteAt(b, off)
	}
	clear(buf)
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data) {
		t.Fatal("damaged cache file served wrong bytes")
	}
	if v.ReadCacheStats().Bad == 0 {
		t.Fatal("no damage detected")
	}
}

// TestReadCacheEvictsUnderConcurrentReaders: a cache of 8 blocks for a
// disk of 256, many readers at once (run with -race): eviction and
// reads never mix blocks up.
func TestReadCacheEvictsUnderConcurrentReaders(t *testing.T) {
	data := randomDisk(4, 4<<20)
	v := cachedVolume(t, data, 8)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			readRandom(t, v, data, uint64(10+g), 200)
		}()
	}
	wg.Wait()
	st := v.ReadCacheStats()
	if st.Evictions == 0 || st.Hits == 0 || st.Bytes > 8*v.bs {
		t.Fatalf("stats %+v", st)
	}
}

// TestPrefetchFillsReadCache: NBD_CMD_CACHE puts blocks in the file at
// once, without the second-read rule.
func TestPrefetchFillsReadCache(t *testing.T) {
	data := randomDisk(5, 1<<20)
	v := cachedVolume(t, data, 1024)
	if err := v.Prefetch(context.Background(), 0, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if v.ReadCacheStats().Inserts == 0 {
		t.Fatal("prefetch cached nothing")
	}
	buf := make([]byte, len(data))
	if _, err := v.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("read after prefetch: %v", err)
	}
	if v.ReadCacheStats().Hits == 0 {
		t.Fatal("read after prefetch did not hit the file")
	}
}

// TestReadCacheOnce: a volume takes one read cache file; a second, or one
// after Close, is refused instead of leaving a file nothing closes.
func TestReadCacheOnce(t *testing.T) {
	v := cachedVolume(t, randomDisk(3, 256<<10), 8)
	if err := v.EnableReadCache(t.TempDir(), 8*v.bs); err == nil || !strings.Contains(err.Error(), "has a read cache already") {
		t.Fatalf("second read cache: %v", err)
	}
	v.Close()
	w, err := v.s.OpenVolume(v.info.ID)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := w.EnableReadCache(t.TempDir(), 8*v.bs); err == nil || !strings.Contains(err.Error(), "closed volume") {
		t.Fatalf("read cache after Close: %v", err)
	}
}
