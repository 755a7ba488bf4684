package hydrate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"csbs/blockstore"
)

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

// backup stores disk in a new store of 4 KiB blocks and returns its
// volume.
func backup(t testing.TB, disk []byte) *blockstore.Volume {
	t.Helper()
	return backupBS(t, disk, 4096)
}

// backupBS stores disk in a new store of block size bs and returns its
// volume.
func backupBS(t testing.TB, disk []byte, bs int) *blockstore.Volume {
	t.Helper()
	s, err := blockstore.Open(filepath.Join(t.TempDir(), "store"), blockstore.Options{BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p, err := s.Ingest(context.Background(), memSource{disk}, blockstore.IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), []*blockstore.PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenVolume(p.Info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func disk(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 9))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		if r.IntN(3) == 0 {
			continue // zero block
		}
		for i := off; i < min(off+4096, size); i++ {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

func openDevice(t testing.TB, vol *blockstore.Volume, dir string) *Device {
	t.Helper()
	target := filepath.Join(dir, "target.img")
	_, statErr := os.Stat(target)
	fresh := os.IsNotExist(statErr)
	f, err := os.OpenFile(target, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if fresh {
		f.Truncate(vol.Size())
	}
	nblocks := (vol.Size() + 4095) / 4096
	bm, err := OpenBitmap(filepath.Join(dir, "target.bitmap"), nblocks, 4096, vol.Size())
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDevice(vol, f, bm, fresh)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Guest writes at unaligned offsets while hydration runs: the final target
// is the backup with every write applied.
func TestWritesDuringHydration(t *testing.T) {
	size := 3<<20 + 1234
	base := disk(1, size)
	vol := backup(t, base)
	dir := t.TempDir()
	d := openDevice(t, vol, dir)
	expect := bytes.Clone(base)
	h := NewHydrator(d, 8<<20)

	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			buf := make([]byte, 20000)
			rd := make([]byte, 20000)
			for range 60 {
				n := 1 + r.IntN(len(buf))
				// Writes are serialised by mu so that expect follows their order;
				// the hydrator runs concurrently with all of them.
				off := r.Int64N(int64(size - n))
				for i := range buf[:n] {
					buf[i] = byte(r.Uint32())
				}
				mu.Lock()
				if _, err := d.WriteAt(buf[:n], off); err != nil {
					mu.Unlock()
					t.Error(err)
					return
				}
				copy(expect[off:], buf[:n])
				mu.Unlock()
				// Reads see the writes at once, hydrated or not.
				mu.Lock()
				if _, err := d.ReadAt(rd[:n], off); err != nil || !bytes.Equal(rd[:n], expect[off:off+int64(n)]) {
					mu.Unlock()
					t.Errorf("read after write at %d: %v", off, err)
					return
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !d.Bitmap().Complete() {
		t.Fatalf("hydration ended with %d of %d blocks", d.Bitmap().Count(), d.Bitmap().Blocks())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "target.img"))
	if !bytes.Equal(got, expect) {
		t.Fatal("target after hydration is not backup + writes")
	}
}

// Pause, close, reopen: hydration resumes from the bitmap and guest writes
// made before the stop survive.
func TestResumeAfterStop(t *testing.T) {
	size := 2 << 20
	base := disk(2, size)
	vol := backup(t, base)
	dir := t.TempDir()
	d := openDevice(t, vol, dir)
	expect := bytes.Clone(base)
	write := func(d *Device, off int64, s string) {
		if _, err := d.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
		copy(expect[off:], s)
	}
	write(d, 5000, "hello guest")       // partial block, not hydrated
	write(d, int64(size)-3, "end")      // last block
	write(d, 1<<20+4095, "straddles 2") // across a block boundary
	h := NewHydrator(d, 0)
	ctx, cancel := context.WithCancel(context.Background())
	h.Pause()
	cancel()
	if err := h.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("paused run: %v", err)
	}
	held := d.Bitmap().Count()
	d.Close() // a daemon stop

	d2 := openDevice(t, vol, dir)
	if d2.Bitmap().Count() != held || held < 3 {
		t.Fatalf("bitmap after reopen: %d blocks, had %d", d2.Bitmap().Count(), held)
	}
	write(d2, 100, "second life")
	if err := NewHydrator(d2, 0).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	d2.Close()
	got, _ := os.ReadFile(filepath.Join(dir, "target.img"))
	if !bytes.Equal(got, expect) {
		t.Fatal("target after resume differs")
	}
}

func TestBitmapRejectsForeignFiles(t *testing.T) {
	good := append(encodeHeader(10, 4096, 40000), 0xff, 0x03)
	if _, err := DecodeBitmap(good, 10, 4096, 40000); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"empty":          nil,
		"magic":          append([]byte("XXXXXXXX"), good[8:]...),
		"blocks":         append(encodeHeader(11, 4096, 40000), 0, 0),
		"size":           append(encodeHeader(10, 4096, 40001), 0, 0),
		"short":          good[:len(good)-1],
		"long":           append(bytes.Clone(good), 0),
		"bits past last": append(encodeHeader(10, 4096, 40000), 0xff, 0x07),
	} {
		if _, err := DecodeBitmap(data, 10, 4096, 40000); !errors.Is(err, ErrBadBitmap) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if popcount(good[bitmapHeader:]) != 10 {
		t.Fatal("popcount")
	}
}

// TestCopyOnReadDuringHydration: a slow hydrator, four guests each
// writing unaligned ranges of its own part of the disk and reading
// random unaligned ranges of it (blocks not hydrated yet are copied to
// the target on the way), all at once: every read sees the backup plus
// that guest's writes, reads copy blocks so the hydrator copies fewer,
// and the final target is the backup with every write applied.
func TestCopyOnReadDuringHydration(t *testing.T) {
	size := 4<<20 + 777
	base := disk(7, size)
	vol := backup(t, base)
	dir := t.TempDir()
	d := openDevice(t, vol, dir)
	expect := bytes.Clone(base)
	h := NewHydrator(d, 1<<20) // about 4 s for the disk: the guests get there first
	done := make(chan error, 1)
	go func() { done <- h.Run(context.Background()) }()
	const guests = 4
	part := int64(size) / guests
	var wg sync.WaitGroup
	for g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo, hi := int64(g)*part, int64(g+1)*part
			if g == guests-1 {
				hi = int64(size)
			}
			r := rand.New(rand.NewPCG(uint64(g), 77))
			buf := make([]byte, 50000)
			for range 40 {
				// Reads first: most blocks are not hydrated yet.
				for range 3 {
					n := 1 + r.Int64N(min(int64(len(buf)), hi-lo))
					off := lo + r.Int64N(hi-lo-n+1)
					if _, err := d.ReadAt(buf[:n], off); err != nil {
						t.Error(err)
						return
					}
					if !bytes.Equal(buf[:n], expect[off:off+n]) {
						t.Errorf("guest %d: read %d at %d differs", g, n, off)
						return
					}
				}
				n := 1 + r.Int64N(min(20000, hi-lo))
				off := lo + r.Int64N(hi-lo-n+1)
				for i := range buf[:n] {
					buf[i] = byte(r.Uint32())
				}
				// Each guest owns its bytes of expect; blocks shared at
				// the borders are serialised by the device.
				copy(expect[off:], buf[:n])
				if _, err := d.WriteAt(buf[:n], off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	h.SetRate(0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var data int64
	for i := int64(0); i*4096 < int64(size); i++ {
		if hash, _ := vol.BlockHash(i); !hash.IsZero() {
			data += min(4096, int64(size)-i*4096)
		}
	}
	if copied := h.copied.Load(); copied >= data {
		t.Errorf("the hydrator copied %d bytes of %d: guest reads copied nothing", copied, data)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "target.img"))
	if !bytes.Equal(got, expect) {
		t.Fatal("target after hydration is not the backup plus the guests' writes")
	}
}

// TestTrim: TRIM zeroes the whole blocks inside its range (the edges of
// the range stay), hydration skips them, and a file target gets the
// space back.
func TestTrim(t *testing.T) {
	size := 1 << 20
	base := bytes.Repeat([]byte("backup data "), size/12+1)[:size] // no zero blocks
	vol := backup(t, base)
	dir := t.TempDir()
	d := openDevice(t, vol, dir)
	expect := bytes.Clone(base)
	// Blocks 2..9 whole, plus parts of blocks 1 and 10 (kept).
	if err := d.Trim(4096+100, 9*4096); err != nil {
		t.Fatal(err)
	}
	clear(expect[2*4096 : 10*4096])
	// The last, and a write after a trim.
	if err := d.Trim(int64(size)-8192, 8192); err != nil {
		t.Fatal(err)
	}
	clear(expect[size-8192:])
	if _, err := d.WriteAt([]byte("after"), 3*4096+10); err != nil {
		t.Fatal(err)
	}
	copy(expect[3*4096+10:], "after")
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, expect) {
		t.Fatalf("guest view after trim: %v", err)
	}
	h := NewHydrator(d, 0)
	if err := h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target.img")
	got, _ = os.ReadFile(target)
	if !bytes.Equal(got, expect) {
		t.Fatal("target after hydration differs")
	}
	if h.copied.Load() > int64(size-10*4096) {
		t.Errorf("hydrator copied %d bytes: it copied trimmed blocks", h.copied.Load())
	}
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > int64(size)-8*4096 {
		t.Errorf("target allocates %d bytes: no hole was punched", st.Blocks*512)
	}
}

// TestRateLimitExact: a hydrator with several workers and a limit of
// 1 MiB/s reserves every byte before it writes it, from a bucket that
// starts empty: on a clock that does not move, the last reservation
// waits bytes copied / rate, as one writer at that rate would. (No time
// is measured: the limiter's clock is replaced.)
func TestRateLimitExact(t *testing.T) {
	size := 6 << 20
	base := disk(9, size)
	vol := backup(t, base)
	d := openDevice(t, vol, t.TempDir())
	defer d.Close()
	const bps = 1 << 20
	t0 := time.Unix(1e9, 0)
	var mu sync.Mutex
	var longest time.Duration
	lim := newLimiter(bps, func() time.Time { return t0 }, func(_ context.Context, d time.Duration) error {
		mu.Lock()
		longest = max(longest, d)
		mu.Unlock()
		return nil
	})
	h := NewHydratorWith(d, Options{Limiter: lim, Workers: 8})
	if err := h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := time.Duration(float64(h.copied.Load()) / bps * float64(time.Second))
	if h.copied.Load() < int64(size)/2 || longest < want-time.Millisecond || longest > want+time.Millisecond {
		t.Fatalf("copied %d bytes; the last reservation waits %v, want %v", h.copied.Load(), longest, want)
	}
}

// TestRateLimitAfterIdleAtLowRates: after an idle spell (a paused
// hydrator, or blocks copy-on-read already filled) the bucket holds a
// quarter second of the rate, not a fixed 1 MiB, which at 256 KiB/s let
// four seconds' worth through at once. On a clock that does not move,
// 1 MiB at 256 KiB/s must wait about 3.75 s.
func TestRateLimitAfterIdleAtLowRates(t *testing.T) {
	const bps = 256 << 10
	now := time.Unix(1e9, 0)
	var waited time.Duration
	lim := newLimiter(bps, func() time.Time { return now }, func(_ context.Context, d time.Duration) error {
		waited = max(waited, d)
		return nil
	})
	now = now.Add(10 * time.Second) // idle: the bucket fills to its burst
	for range 256 {
		if err := lim.wait(context.Background(), 4096); err != nil {
			t.Fatal(err)
		}
	}
	if want := 3750 * time.Millisecond; waited < want-time.Millisecond {
		t.Fatalf("1 MiB after an idle spell at %d B/s: the last byte waited %v, want %v", bps, waited, want)
	}
}

// TestRateLimitHoldsFromTheStart: hydration copies at most its limit per
// second from the first byte (plus one block), not a burst at full speed
// first, so the rate csbs restore show reports stays beside the limit.
// The bound is on the least time a limited copy can take, which load on
// the machine can only lengthen.
func TestRateLimitHoldsFromTheStart(t *testing.T) {
	const limit = 4 << 20
	base := disk(7, 3<<20)
	vol := backup(t, base)
	d := openDevice(t, vol, t.TempDir())
	h := NewHydrator(d, limit)
	start := time.Now()
	if err := h.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	copied := h.copied.Load()
	if copied < 1<<20 {
		t.Fatalf("copied only %d bytes of a 3 MiB disk with data", copied)
	}
	if least := time.Duration(float64(copied-4096) / limit * float64(time.Second)); took < least {
		t.Fatalf("copied %d bytes in %s at a limit of %d B/s: at least %s", copied, took, limit, least)
	}
	if r := h.Rate(); r > limit*1.05 {
		t.Fatalf("rate %.0f B/s over the limit %d", r, limit)
	}
}
