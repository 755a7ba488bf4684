package blockstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// memSource is an in-memory disk.
type memSource struct{ b []byte }

func (m memSource) Size() int64 { return int64(len(m.b)) }
func (m memSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// newTestStore opens a store in a temp dir and, when the test ends, checks
// the store's invariants: every committed map reads back completely and
// every block it names is present and verifies.
func newTestStore(t *testing.T, opts Options) *Store {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			checkInvariants(t, s)
		}
		s.Close()
	})
	return s
}

func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	maps, err := s.ListMaps()
	if err != nil {
		t.Fatalf("invariant: list maps: %v", err)
	}
	for _, m := range maps {
		for i := int64(0); i < m.Blocks(); i++ {
			h, err := s.BlockHash(m.ID, i)
			if err != nil {
				t.Fatalf("invariant: map %s block %d: %v", m.ID, i, err)
			}
			if h.IsZero() {
				continue
			}
			if err := s.VerifyBlock(h); err != nil && !t.Failed() {
				t.Errorf("invariant: map %s block %d: %v", m.ID, i, err)
				return
			}
		}
	}
}

// randomDisk returns size bytes: compressible text-like runs, random runs
// and zero runs, so that every path of ingest is exercised.
func randomDisk(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for off := 0; off < size; {
		n := min(size-off, 4096*(1+r.IntN(40)))
		switch r.IntN(3) {
		case 0: // text-like, compressible
			words := []string{"backup ", "policy ", "server ", "disk ", "block "}
			for i := off; i < off+n; {
				i += copy(b[i:off+n], words[r.IntN(len(words))])
			}
		case 1:
			for i := off; i < off+n; i++ {
				b[i] = byte(r.Uint32())
			}
		case 2: // zeros
		}
		off += n
	}
	return b
}

func ingestCommit(t *testing.T, s *Store, data []byte, parent MapID) MapInfo {
	t.Helper()
	p, err := s.Ingest(context.Background(), memSource{data}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), []*PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	return p.Info
}

func readAll(t *testing.T, s *Store, id MapID) []byte {
	t.Helper()
	v, err := s.OpenVolume(id)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	out, err := io.ReadAll(io.NewSectionReader(v, 0, v.Size()))
	if err != nil {
		t.Fatalf("read map %s: %v", id, err)
	}
	return out
}

func TestRoundTripSizes(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096})
	for _, size := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 17, 1 << 20, 5<<20 + 333} {
		data := randomDisk(uint64(size), size)
		info := ingestCommit(t, s, data, MapID{})
		if info.Size != int64(size) {
			t.Fatalf("size %d: map says %d", size, info.Size)
		}
		if got := readAll(t, s, info.ID); !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back differs", size)
		}
	}
}

func TestCodecs(t *testing.T) {
	for _, c := range []Codec{CodecS2, CodecZstd, CodecRaw} {
		t.Run(c.String(), func(t *testing.T) {
			s := newTestStore(t, Options{Codec: c})
			data := randomDisk(7, 3<<20)
			info := ingestCommit(t, s, data, MapID{})
			if got := readAll(t, s, info.ID); !bytes.Equal(got, data) {
				t.Fatal("read back differs")
			}
			if c != CodecRaw && info.Stats.NewBytes >= info.Stats.NewRawBytes {
				t.Errorf("%s stored %d bytes for %d raw: no compression", c, info.Stats.NewBytes, info.Stats.NewRawBytes)
			}
		})
	}
}

func TestZeroBlocksNotStored(t *testing.T) {
	s := newTestStore(t, Options{})
	data := make([]byte, 200<<20+100) // 200 MiB of zeros, odd size
	info := ingestCommit(t, s, data, MapID{})
	if info.Stats.NewBlocks != 0 || info.Stats.DataBlocks != 0 {
		t.Fatalf("all-zero disk stored %d blocks (%d data)", info.Stats.NewBlocks, info.Stats.DataBlocks)
	}
	if info.Stats.ZeroBlocks != info.Blocks() {
		t.Fatalf("zero blocks %d, want %d", info.Stats.ZeroBlocks, info.Blocks())
	}
	// No segment is stored for an all-zero disk: the map file is a
	// header and a hole.
	for i := range info.Segments {
		if info.Segments[i] != 0 {
			t.Fatalf("segment bitmap of an all-zero disk: %x", info.Segments)
		}
	}
	if n, err := allocatedBytes(filepath.Join(s.dir, mapsDir)); err != nil || n > 64<<10 {
		t.Fatalf("map files of an all-zero 200 MiB disk occupy %d bytes (%v)", n, err)
	}
	got := make([]byte, 1<<20)
	v, _ := s.OpenVolume(info.ID)
	if _, err := v.ReadAt(got, 100<<20); err != nil || !IsZeroBlock(got) {
		t.Fatalf("read zeros: %v", err)
	}
}

func TestDedupe(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 16 << 10})
	data := randomDisk(42, 16<<20)
	first := ingestCommit(t, s, data, MapID{})
	second := ingestCommit(t, s, data, MapID{})
	if second.Stats.NewBlocks != 0 || second.Stats.NewBytes != 0 {
		t.Fatalf("same disk again stored %d blocks / %d bytes", second.Stats.NewBlocks, second.Stats.NewBytes)
	}
	// Without a parent the lookup path must dedupe just as well.
	third := ingestCommit(t, s, data, MapID{})
	if third.Stats.NewBlocks != 0 {
		t.Fatalf("same disk without parent stored %d blocks", third.Stats.NewBlocks)
	}
	// Change 1% of the blocks.
	changed := bytes.Clone(data)
	r := rand.New(rand.NewPCG(1, 2))
	nblocks := len(data) / (16 << 10)
	touched := map[int]bool{}
	for len(touched) < nblocks/100 {
		i := r.IntN(nblocks)
		touched[i] = true
		off := i*(16<<10) + r.IntN(16<<10)
		changed[off] ^= 0xff
	}
	fourth := ingestCommit(t, s, changed, MapID{})
	if fourth.Stats.NewBlocks > int64(len(touched)) {
		t.Fatalf("1%% change stored %d blocks, %d changed", fourth.Stats.NewBlocks, len(touched))
	}
	if fourth.Stats.NewBlocks < int64(len(touched))*9/10 {
		t.Fatalf("1%% change stored only %d blocks, %d changed", fourth.Stats.NewBlocks, len(touched))
	}
	if got := readAll(t, s, fourth.ID); !bytes.Equal(got, changed) {
		t.Fatal("changed disk reads back wrong")
	}
	if got := readAll(t, s, first.ID); !bytes.Equal(got, data) {
		t.Fatal("first disk reads back wrong after the change")
	}
}

func TestBlockSizeRecorded(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{BlockSize: 32 << 10})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(dir, Options{BlockSize: 64 << 10})
	if !errors.Is(err, ErrBlockSizeMismatch) || !strings.Contains(err.Error(), "32768") || !strings.Contains(err.Error(), "65536") {
		t.Fatalf("open with other block size: %v", err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.BlockSize() != 32<<10 {
		t.Fatalf("block size %d, want the recorded 32768", s.BlockSize())
	}
	if _, err := Open(t.TempDir(), Options{BlockSize: 1000}); err == nil {
		t.Fatal("block size 1000 accepted")
	}
}

// TestCorruptValueOnDisk flips a byte of a stored block inside its pack
// file and expects a corruption error on read, never the bytes.
func TestCorruptValueOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Codec: CodecRaw, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	data := randomDisk(99, 64<<10)
	r := rand.New(rand.NewPCG(5, 5))
	marker := make([]byte, 4096)
	for i := range marker {
		marker[i] = byte(r.Uint32())
	}
	copy(data[8192:], marker) // block 2 is this random block
	p, err := s.Ingest(context.Background(), memSource{data}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), []*PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	id := p.Info.ID
	s.Close()

	flipped := false
	files, _ := filepath.Glob(filepath.Join(dir, packsDir, "*", "*.pack"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, marker[100:200]); i >= 0 {
			b[i+50] ^= 0x01
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("block bytes not found in any pack file")
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.OpenVolume(id)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := v.ReadAt(buf, 8192)
	var ce *CorruptBlockError
	if !errors.As(err, &ce) || !IsDataError(err) {
		t.Fatalf("read of corrupt block: n=%d err=%v", n, err)
	}
	if ce.Map != id || ce.Block != 2 {
		t.Fatalf("error names map %s block %d, want %s block 2", ce.Map, ce.Block, id)
	}
	if bytes.Equal(buf, marker) || bytes.Contains(buf, marker[100:200]) {
		t.Fatal("corrupt read returned block bytes")
	}
	// Every other block reads back right or fails as damaged; never wrong
	// bytes.
	for off := int64(0); off < int64(len(data)); off += 4096 {
		n, err := v.ReadAt(buf, off)
		if err != nil && !IsDataError(err) {
			t.Fatalf("block at %d: %v", off, err)
		}
		if err == nil && !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
			t.Fatalf("block at %d: wrong bytes", off)
		}
	}
}

func TestCorruptSegmentDetected(t *testing.T) {
	id := NewMapID()
	seg := encodeSegment(id, 3, []Hash{HashBlock([]byte("a")), {}, HashBlock([]byte("b"))})
	if _, err := DecodeSegment(id, 3, 3, seg); err != nil {
		t.Fatal(err)
	}
	for i := range seg {
		bad := bytes.Clone(seg)
		bad[i] ^= 0x80
		if _, err := DecodeSegment(id, 3, 3, bad); err == nil {
			t.Fatalf("flip at byte %d not detected", i)
		}
	}
	// The checksum is keyed: the same bytes are no segment of another
	// map or another position.
	if _, err := DecodeSegment(NewMapID(), 3, 3, seg); err == nil {
		t.Fatal("segment of another map accepted")
	}
	if _, err := DecodeSegment(id, 4, 3, seg); err == nil {
		t.Fatal("segment at another position accepted")
	}
	for _, n := range []int{0, 15, 16, 17, 48} {
		if _, err := DecodeSegment(id, 0, 1, make([]byte, n)); err == nil {
			t.Fatalf("segment of %d zero bytes accepted", n)
		}
	}
}

func TestConcurrentReaders(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 8192, CacheBytes: 256 << 10})
	data := randomDisk(3, 8<<20)
	info := ingestCommit(t, s, data, MapID{})
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
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 100<<10)
			for range 200 {
				var off int64
				n := 1 + r.IntN(len(buf))
				if g%2 == 0 { // random
					off = r.Int64N(int64(len(data) - n))
				} else { // sequential from a random start
					off = r.Int64N(int64(len(data)/2)) &^ 4095
				}
				if _, err := v.ReadAt(buf[:n], off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
					errs <- errors.New("concurrent read returned wrong bytes")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestReadPastEnd(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(11, 10000)
	info := ingestCommit(t, s, data, MapID{})
	v, _ := s.OpenVolume(info.ID)
	buf := make([]byte, 5000)
	n, err := v.ReadAt(buf, 8000)
	if n != 2000 || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data[8000:]) {
		t.Fatalf("read across end: n=%d err=%v", n, err)
	}
	if n, err := v.ReadAt(buf, 10000); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read at end: n=%d err=%v", n, err)
	}
	if _, err := v.ReadAt(buf, -1); err == nil {
		t.Fatal("negative offset accepted")
	}
}

// failingSource fails after a number of bytes.
type failingSource struct {
	memSource
	failAt int64
}

func (f failingSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, errors.New("injected read failure")
	}
	return f.memSource.ReadAt(p, off)
}

func TestFailedIngestLeavesNothing(t *testing.T) {
	s := newTestStore(t, Options{})
	data := randomDisk(8, 150<<20/10)
	_, err := s.Ingest(context.Background(), failingSource{memSource{data}, int64(len(data) / 2)}, IngestOptions{})
	if err == nil || !strings.Contains(err.Error(), "injected read failure") {
		t.Fatalf("ingest of failing source: %v", err)
	}
	maps, _ := s.ListMaps()
	if len(maps) != 0 {
		t.Fatalf("%d maps visible after a failed ingest", len(maps))
	}
	assertOnlyMapFilesOf(t, s)
	assertNoStaging(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Ingest(ctx, memSource{data}, IngestOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("ingest with cancelled context: %v", err)
	}
	assertOnlyMapFilesOf(t, s)
	assertNoStaging(t, s)
}

// shrunkSource says it has size bytes but ends at len(b), as a file
// truncated while it is backed up: reads past len(b) are short, with
// io.EOF.
type shrunkSource struct {
	memSource
	size int64
}

func (s shrunkSource) Size() int64 { return s.size }

// TestShortReadFailsIngest: a source that ends before its size (short
// reads with io.EOF, the last one ending exactly at the disk's end) fails
// the backup instead of storing zero-padded blocks as its data.
func TestShortReadFailsIngest(t *testing.T) {
	s := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(9, 1<<20)
	for _, cut := range []int{len(data) / 2, len(data) - 100} {
		_, err := s.Ingest(context.Background(), shrunkSource{memSource{data[:cut]}, int64(len(data))}, IngestOptions{})
		if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ingest of a source that ends at %d of %d bytes: %v", cut, len(data), err)
		}
	}
	if maps, _ := s.ListMaps(); len(maps) != 0 {
		t.Fatalf("%d maps after failed ingests", len(maps))
	}
	// The last block may end with io.EOF and every byte read.
	p, err := s.Ingest(context.Background(), memSource{data[:len(data)-100]}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Abort(context.Background())
}

func assertNoStaging(t *testing.T, s *Store) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(s.dir, stagingDir, "*"))
	if len(left) > 0 {
		t.Fatalf("staged packs left behind: %v", left)
	}
}

func TestAbortPending(t *testing.T) {
	s := newTestStore(t, Options{})
	p, err := s.Ingest(context.Background(), memSource{randomDisk(1, 4<<20)}, IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenVolume(p.Info.ID); !errors.Is(err, ErrMapNotFound) {
		t.Fatalf("pending map readable before commit: %v", err)
	}
	if err := p.Abort(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertOnlyMapFilesOf(t, s)
}

// Close while read-ahead is in flight: no panic, later reads fail cleanly.
func TestCloseDuringReadAhead(t *testing.T) {
	s, err := Open(t.TempDir(), Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	data := randomDisk(5, 4<<20)
	info := ingestCommit(t, s, data, MapID{})
	v, _ := s.OpenVolume(info.ID)
	buf := make([]byte, 8192)
	for off := int64(0); off < 1<<20; off += int64(len(buf)) {
		if _, err := v.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(buf, 2<<20); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// TestOpenInUse: a store open elsewhere is refused with ErrInUse (the
// daemon names it "in use by another csbs daemon"; test harnesses wait
// on it), and opens once the holder closes it.
func TestOpenInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s.Close()
}
