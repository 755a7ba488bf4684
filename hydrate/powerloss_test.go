package hydrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"csbs/blockstore"
)

// diskSector is the unit a power loss tears writes at.
const diskSector = 512

// memDisk holds files that lose power: each knows what is durable (synced)
// and which sectors were written since. The disk counts writes, syncs and
// truncations; at the cutAt-th it loses power: it keeps, for every file,
// the durable content plus a seeded random subset of the unsynced sectors
// (each file gets its own chance, 0, 1/2 or 1, so that the bitmap's pages
// may reach the disk while the target's do not), or with kill set every
// unsynced write (a killed process leaves the page cache intact). The
// files go on working after the cut; only the frozen images count.
type memDisk struct {
	mu     sync.Mutex
	files  []*memFile
	ops    int
	cutAt  int
	kill   bool
	rng    *rand.Rand
	frozen map[string][]byte
}

type memFile struct {
	d       *memDisk
	name    string
	cur     []byte
	durable []byte
	dirty   map[int64]bool // 512-byte sectors written since the last sync
}

var _ File = (*memFile)(nil)

func (d *memDisk) file(name string, content []byte) *memFile {
	f := &memFile{d: d, name: name, cur: bytes.Clone(content), durable: bytes.Clone(content), dirty: map[int64]bool{}}
	d.files = append(d.files, f)
	return f
}

// op counts one operation and cuts the power at the cutAt-th (d.mu held).
func (d *memDisk) op() {
	d.ops++
	if d.ops == d.cutAt {
		d.cutLocked()
	}
}

func (d *memDisk) cutLocked() {
	if d.frozen != nil {
		return
	}
	d.frozen = map[string][]byte{}
	for _, f := range d.files {
		if d.kill {
			d.frozen[f.name] = bytes.Clone(f.cur)
			continue
		}
		chance := []float64{0, 0.5, 1}[d.rng.IntN(3)]
		img := bytes.Clone(f.durable)
		if d.rng.Float64() < chance {
			img = append(img[:min(len(img), len(f.cur))], make([]byte, max(0, len(f.cur)-len(img)))...)
		}
		for s := range f.dirty {
			lo := s * diskSector
			if lo >= int64(len(img)) || d.rng.Float64() >= chance {
				continue
			}
			hi := min(lo+diskSector, int64(len(img)))
			src := make([]byte, hi-lo)
			if lo < int64(len(f.cur)) {
				copy(src, f.cur[lo:min(hi, int64(len(f.cur)))])
			}
			copy(img[lo:hi], src)
		}
		d.frozen[f.name] = img
	}
}

// cut loses power now unless it happened already, and returns the images.
func (d *memDisk) cut() map[string][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cutLocked()
	return d.frozen
}

func (d *memDisk) isCut() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen != nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if off >= int64(len(f.cur)) {
		return 0, io.EOF
	}
	n := copy(p, f.cur[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.cur)) {
		f.cur = append(f.cur, make([]byte, end-int64(len(f.cur)))...)
	}
	copy(f.cur[off:], p)
	for s := off / diskSector; s*diskSector < off+int64(len(p)); s++ {
		f.dirty[s] = true
	}
	f.d.op()
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if len(f.durable) != len(f.cur) {
		f.durable = append(f.durable[:min(len(f.durable), len(f.cur))], make([]byte, max(0, len(f.cur)-len(f.durable)))...)
		copy(f.durable, f.cur)
	} else {
		for s := range f.dirty {
			lo := s * diskSector
			if lo < int64(len(f.cur)) {
				hi := min(lo+diskSector, int64(len(f.cur)))
				copy(f.durable[lo:hi], f.cur[lo:hi])
			}
		}
	}
	clear(f.dirty)
	f.d.op()
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if size <= int64(len(f.cur)) {
		f.cur = f.cur[:size]
	} else {
		f.cur = append(f.cur, make([]byte, size-int64(len(f.cur)))...)
	}
	f.d.op()
	return nil
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	return memInfo{f.name, int64(len(f.cur))}, nil
}

func (f *memFile) Close() error { return nil }

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o600 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }

// openMem opens a device on a disk's files (a new restore when images is
// nil, else the files a power loss left).
func openMem(t *testing.T, d *memDisk, vol Volume, images map[string][]byte) (*Device, error) {
	t.Helper()
	bs := int64(vol.BlockSize())
	target := d.file("target", images["target"])
	if images == nil {
		target.Truncate(vol.Size())
		target.Sync()
	}
	bm, err := NewBitmap(d.file("bits", images["bits"]), [2]File{d.file("j0", images["j0"]), d.file("j1", images["j1"])},
		(vol.Size()+bs-1)/bs, int(bs), vol.Size())
	if err != nil {
		return nil, err
	}
	return NewDevice(vol, target, bm, true)
}

// history is what the guest wrote, per 512-byte sector, in order.
type history struct {
	versions map[int64][][]byte // sector → contents written, oldest first
	// acked[s] is how many versions of s were acknowledged before the
	// cut; flushed[s] how many before the last flush that completed
	// before it.
	acked, flushed map[int64]int
}

// check verifies every sector of got (the whole disk as the guest or the
// target sees it) against the backup and the history.
func (h *history) check(got, base []byte, kill bool) error {
	for s := int64(0); s*diskSector < int64(len(base)); s++ {
		lo, hi := s*diskSector, min((s+1)*diskSector, int64(len(base)))
		sec := got[lo:hi]
		vs := h.versions[s]
		// From which version on is a content allowed?
		from := 0
		switch {
		case kill:
			from = h.acked[s] // the last acknowledged one
		default:
			from = h.flushed[s] // the last flushed one
		}
		allowed := func(i int) bool { return i >= from-1 }
		ok := from == 0 && bytes.Equal(sec, base[lo:hi])
		for i, v := range vs {
			if allowed(i) && bytes.Equal(sec, v[:hi-lo]) {
				ok = true
			}
		}
		if !ok {
			kind := "neither the backup's nor a guest's bytes"
			for _, v := range vs {
				if bytes.Equal(sec, v[:hi-lo]) {
					kind = "an older guest write than one acknowledged/flushed before the cut"
				}
			}
			if bytes.Equal(sec, base[lo:hi]) && from > 0 {
				kind = "the backup's bytes, but a guest write to it was acknowledged/flushed before the cut"
			}
			return fmt.Errorf("sector %d (block bytes %d..%d) holds %s (%d versions written, %d acknowledged, %d flushed)", s, lo, hi, kind, len(vs), h.acked[s], h.flushed[s])
		}
	}
	return nil
}

// run drives one restore on a memDisk in a seeded, reproducible order of
// guest writes, flushes, hydration steps and sync points, cutting power
// at cutAt, then recovers from the images and checks every sector, as
// the guest sees it at once and in the target once hydration completes.
func runPowerCut(t *testing.T, vol *blockstore.Volume, base []byte, seed uint64, cutAt int, kill bool) (ops int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	d := &memDisk{cutAt: cutAt, kill: kill, rng: rand.New(rand.NewPCG(seed, uint64(cutAt)))}
	dev, err := openMem(t, d, vol, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &history{versions: map[int64][][]byte{}, acked: map[int64]int{}, flushed: map[int64]int{}}
	hyd := NewHydrator(dev, 0)
	size := int64(len(base))
	nextBlock := int64(0)
	for range 120 {
		// record notes the content of every sector of [off, off+n) as a
		// version the guest wrote.
		record := func(off, n int64, acked bool) {
			cur := make([]byte, diskSector)
			for s := off / diskSector; s*diskSector < off+n; s++ {
				if _, err := dev.ReadAt(cur[:min(diskSector, size-s*diskSector)], s*diskSector); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				h.versions[s] = append(h.versions[s], bytes.Clone(cur))
				if acked {
					h.acked[s] = len(h.versions[s])
				}
			}
		}
		switch x := r.IntN(100); {
		case x < 42: // a guest write, unaligned
			n := 1 + r.Int64N(40000)
			off := r.Int64N(size - n + 1)
			p := randomBytes(r, n)
			if _, err := dev.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			// Record the full content of every sector the write touched.
			record(off, n, !d.isCut())
		case x < 47: // TRIM: whole blocks inside the range become zeroes
			n := 1 + r.Int64N(5*dev.bs)
			off := r.Int64N(size - n + 1)
			if err := dev.Trim(off, n); err != nil {
				t.Fatal(err)
			}
			first, end := (off+dev.bs-1)/dev.bs*dev.bs, (off+n)/dev.bs*dev.bs
			if off+n == size {
				end = size
			}
			if end > first {
				record(first, end-first, !d.isCut())
			}
		case x < 55: // a guest read: copies the blocks it touches into the target
			n := 1 + r.Int64N(3*dev.bs)
			off := r.Int64N(size - n + 1)
			if _, err := dev.ReadAt(make([]byte, n), off); err != nil {
				t.Fatal(err)
			}
		case x < 60: // FLUSH from the guest
			if err := dev.Flush(); err != nil {
				t.Fatal(err)
			}
			if !d.isCut() {
				for s, n := range h.acked {
					h.flushed[s] = n
				}
			}
		default: // the hydrator copies a few blocks, sometimes syncs
			for k := r.IntN(4); k >= 0 && nextBlock < dev.bm.Blocks(); k-- {
				if _, err := hyd.copyBlock(nextBlock); err != nil {
					t.Fatal(err)
				}
				nextBlock++
			}
			if r.IntN(3) == 0 {
				if err := dev.syncPoint(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	images := d.cut()
	ops = d.ops

	// Reboot: the files as the power loss left them.
	d2 := &memDisk{rng: rand.New(rand.NewPCG(0, 0))}
	dev2, err := openMem(t, d2, vol, images)
	if err != nil {
		t.Fatalf("seed %d cut %d: recovery: %v", seed, cutAt, err)
	}
	guest := make([]byte, size)
	if _, err := dev2.ReadAt(guest, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.check(guest, base, kill); err != nil {
		t.Fatalf("seed %d cut %d kill %v: guest view after recovery: %v", seed, cutAt, kill, err)
	}
	if err := NewHydrator(dev2, 0).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := h.check(d2.files[0].cur[:size], base, kill); err != nil {
		t.Fatalf("seed %d cut %d kill %v: target after hydration: %v", seed, cutAt, kill, err)
	}
	if !bytes.Equal(d2.files[0].cur[:size], guest) {
		t.Fatalf("seed %d cut %d: hydration changed what the guest saw", seed, cutAt)
	}
	return ops
}

// TestPowerLossDuringHydration cuts the power (and, separately, kills the
// daemon) at every few operations of seeded runs of guest writes,
// flushes and hydration, then recovers and checks every 512-byte sector:
// it holds the backup's bytes or a guest's, a flushed write survives a
// power loss, and an acknowledged one survives a kill.
func TestPowerLossDuringHydration(t *testing.T) {
	const bs = 16 << 10
	size := 64*bs + 5000
	base := disk(3, size)
	vol := backupBS(t, base, bs)
	step := 3
	if testing.Short() {
		step = 15
	}
	for seed := uint64(1); seed <= 3; seed++ {
		total := runPowerCut(t, vol, base, seed, 0, false)
		t.Logf("seed %d: %d operations", seed, total)
		for _, kill := range []bool{false, true} {
			for cut := 1; cut <= total; cut += step {
				runPowerCut(t, vol, base, seed, cut, kill)
			}
		}
	}
}

// The same checks with the hydrator, three guest writers (each on its own
// part of the disk) and a flusher running at once, power cut or kill at a
// random operation: the protocol must hold under any interleaving (run
// with -race).
func TestPowerLossConcurrent(t *testing.T) {
	const bs = 16 << 10
	size := int64(48*bs + 3000)
	base := disk(4, int(size))
	vol := backupBS(t, base, bs)
	iterations := 100
	if testing.Short() {
		iterations = 8
	}
	for it := range iterations {
		r := rand.New(rand.NewPCG(uint64(it), 11))
		kill := it%2 == 1
		d := &memDisk{cutAt: 50 + r.IntN(1500), kill: kill, rng: rand.New(rand.NewPCG(uint64(it), 12))}
		dev, err := openMem(t, d, vol, nil)
		if err != nil {
			t.Fatal(err)
		}
		h := &history{versions: map[int64][][]byte{}, acked: map[int64]int{}, flushed: map[int64]int{}}
		var hmu sync.Mutex // guards h
		hydErr := make(chan error, 1)
		go func() { hydErr <- NewHydrator(dev, 0).Run(context.Background()) }()
		var wg sync.WaitGroup
		const writers = 3
		region := size / writers / diskSector * diskSector
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wr := rand.New(rand.NewPCG(uint64(it), uint64(w)))
				lo := int64(w) * region
				hi := lo + region
				if w == writers-1 {
					hi = size
				}
				cur := make([]byte, diskSector)
				for range 25 {
					n := 1 + wr.Int64N(min(30000, hi-lo))
					off := lo + wr.Int64N(hi-lo-n+1)
					p := randomBytes(wr, n)
					if _, err := dev.WriteAt(p, off); err != nil {
						t.Error(err)
						return
					}
					acked := !d.isCut()
					for s := off / diskSector; s*diskSector < off+n; s++ {
						// Sectors are the writer's own: nobody else changes them.
						if _, err := dev.ReadAt(cur[:min(diskSector, size-s*diskSector)], s*diskSector); err != nil && err != io.EOF {
							t.Error(err)
							return
						}
						hmu.Lock()
						h.versions[s] = append(h.versions[s], bytes.Clone(cur))
						if acked {
							h.acked[s] = len(h.versions[s])
						}
						hmu.Unlock()
					}
				}
			}()
		}
		flushDone := make(chan struct{})
		go func() {
			defer close(flushDone)
			for range 15 {
				hmu.Lock()
				snap := maps.Clone(h.acked)
				hmu.Unlock()
				if err := dev.Flush(); err != nil {
					t.Error(err)
					return
				}
				if !d.isCut() {
					hmu.Lock()
					for s, n := range snap {
						h.flushed[s] = max(h.flushed[s], n)
					}
					hmu.Unlock()
				}
			}
		}()
		wg.Wait()
		<-flushDone
		images := d.cut()
		if err := <-hydErr; err != nil {
			t.Fatal(err)
		}
		d2 := &memDisk{}
		dev2, err := openMem(t, d2, vol, images)
		if err != nil {
			t.Fatalf("iteration %d: recovery: %v", it, err)
		}
		guest := make([]byte, size)
		if _, err := dev2.ReadAt(guest, 0); err != nil {
			t.Fatal(err)
		}
		if err := h.check(guest, base, kill); err != nil {
			t.Fatalf("iteration %d (cut at op %d, kill %v): %v", it, d.cutAt, kill, err)
		}
		if err := NewHydrator(dev2, 0).Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d2.files[0].cur[:size], guest) {
			t.Fatalf("iteration %d: target after hydration differs from the guest's view", it)
		}
	}
}

// randomBytes returns n bytes no earlier write is likely to have had.
func randomBytes(r *rand.Rand, n int64) []byte {
	p := make([]byte, (n+7)/8*8)
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p[:n]
}
