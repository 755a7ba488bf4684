package blockstore

import (
	"context"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// realData returns up to size bytes of real files (/usr/share, then
// /usr/lib), so that compression figures mean something; it falls back to
// randomDisk's mix where those trees are small.
func realData(b *testing.B, size int) []byte {
	b.Helper()
	out := make([]byte, 0, size)
	for _, root := range []string{"/usr/share", "/usr/lib"} {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || len(out) >= size {
				return fs.SkipAll
			}
			if !d.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(path)
			if err == nil {
				out = append(out, data[:min(len(data), size-len(out))]...)
			}
			return nil
		})
	}
	if len(out) < size {
		out = append(out, randomDisk(7, size-len(out))...)
	}
	return out
}

func benchStore(b *testing.B, codec Codec, data []byte) (*Store, MapInfo) {
	b.Helper()
	s, err := Open(b.TempDir(), Options{Codec: codec, CacheBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	p, err := s.Ingest(context.Background(), memSource{data}, IngestOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Commit(context.Background(), []*PendingMap{p}, nil); err != nil {
		b.Fatal(err)
	}
	return s, p.Info
}

var benchCodecs = []Codec{CodecS2, CodecZstd, CodecRaw}

// BenchmarkIngest measures a first backup of 64 MiB of real files: read,
// hash, compress and write, per codec.
func BenchmarkIngest(b *testing.B) {
	data := realData(b, 64<<20)
	for _, codec := range benchCodecs {
		b.Run(codec.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var stored int64
			for b.Loop() {
				dir := b.TempDir()
				s, err := Open(dir, Options{Codec: codec})
				if err != nil {
					b.Fatal(err)
				}
				p, err := s.Ingest(context.Background(), memSource{data}, IngestOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Commit(context.Background(), []*PendingMap{p}, nil); err != nil {
					b.Fatal(err)
				}
				s.Close()
				stored = dirSize(b, dir)
			}
			b.ReportMetric(float64(stored)/float64(len(data)), "stored/input")
		})
	}
}

// dirSize is the bytes the files under dir occupy on disk.
func dirSize(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return err
		}
		n += st.Blocks * 512
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkLoadBlock measures the cost of a cache miss: Badger lookup,
// decode and BLAKE3 verification of one 64 KiB block, per codec. It bounds
// NBD random reads and hydration.
func BenchmarkLoadBlock(b *testing.B) {
	data := realData(b, 32<<20)
	for _, codec := range benchCodecs {
		b.Run(codec.String(), func(b *testing.B) {
			s, info := benchStore(b, codec, data)
			var hashes []Hash
			for i := int64(0); i < info.Blocks(); i++ {
				h, err := s.BlockHash(info.ID, i)
				if err != nil {
					b.Fatal(err)
				}
				if !h.IsZero() {
					hashes = append(hashes, h)
				}
			}
			b.SetBytes(int64(s.BlockSize()))
			i := 0
			for b.Loop() {
				if _, err := s.loadBlock(context.Background(), hashes[i%len(hashes)], nil); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkVolumeRandom4K measures 4 KiB reads at random offsets through a
// Volume with a 1 MiB cache (nearly every read misses), in parallel.
func BenchmarkVolumeRandom4K(b *testing.B) {
	data := realData(b, 32<<20)
	for _, codec := range benchCodecs {
		b.Run(codec.String(), func(b *testing.B) {
			s, info := benchStore(b, codec, data)
			v, err := s.OpenVolume(info.ID)
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			b.SetBytes(4096)
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(1, 2))
				buf := make([]byte, 4096)
				for pb.Next() {
					off := r.Int64N(v.Size()/4096) * 4096
					if _, err := v.ReadAt(buf, off); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGC measures a collection over a 4 KiB-block store holding
// 16384 live and 16384 garbage blocks.
func BenchmarkGC(b *testing.B) {
	const blocks = 16384
	for b.Loop() {
		b.StopTimer()
		s, err := Open(b.TempDir(), Options{BlockSize: 4096, Codec: CodecRaw})
		if err != nil {
			b.Fatal(err)
		}
		var ids []MapID
		for seed := range uint64(2) {
			data := make([]byte, blocks*4096)
			r := rand.New(rand.NewPCG(seed, 99))
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			p, err := s.Ingest(context.Background(), memSource{data}, IngestOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Commit(context.Background(), []*PendingMap{p}, nil); err != nil {
				b.Fatal(err)
			}
			ids = append(ids, p.Info.ID)
		}
		if err := s.db.Update(func(txn *badger.Txn) error { return DeleteMapTxn(kv.NewTxn(txn), ids[0]) }); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		st, err := s.GC(context.Background())
		b.StopTimer()
		if err != nil || st.FreedBlocks != blocks {
			b.Fatalf("gc: %+v %v", st, err)
		}
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkMarkSetMemory reports the heap GC's mark set takes per block
// (heap-B/block): the Bloom filter against a map of whole hashes (what
// GC held before, ~72 B per block).
func BenchmarkMarkSetMemory(b *testing.B) {
	const n = 1 << 20
	hashes := make([]Hash, n)
	for i := range hashes {
		hashes[i] = HashBlock([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for _, tc := range []struct {
		name string
		fill func() any
	}{
		{"bloom", func() any {
			m := newBloom(n)
			for _, h := range hashes {
				m.add(h)
			}
			return m
		}},
		{"whole-hash", func() any {
			m := map[Hash]struct{}{}
			for _, h := range hashes {
				m[h] = struct{}{}
			}
			return m
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				before := heap()
				set := tc.fill()
				per = float64(heap()-before) / n
				runtime.KeepAlive(set)
			}
			b.ReportMetric(per, "heap-B/block")
		})
	}
}
