package hydrate

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"csbs/internal/extent"
	"csbs/restore"
)

// Volume is the backup being restored; *blockstore.Volume implements it.
// Block returns a verified block through the store's cache (guest reads,
// which tend to come back); BlockTo decodes into the caller's buffer
// without caching (the hydrator, which reads every block once).
type Volume interface {
	restore.Volume
	Block(ctx context.Context, i int64) ([]byte, error)
}

// Device is the instant-restore disk.
type Device struct {
	vol    Volume // the backup being restored
	target File
	bm     *Bitmap
	bs     int64
	size   int64
	// fresh: the target was created empty by us, so blocks that are zero
	// in the backup need no write.
	fresh bool
	locks [1024]sync.Mutex
	// gate: a guest write holds it shared from its journal record until
	// its data is written; a sync point takes it alone to swap journal
	// files, so every write recorded in the file it settles has reached
	// the target before the target's fdatasync.
	gate sync.RWMutex
	// syncMu serialises sync points.
	syncMu sync.Mutex
	// hydMu guards hydrated: blocks whose backup bytes were written to the
	// target (by the hydrator or a copy-on-read) since the last sync
	// point, whose bits the next sync point makes durable.
	hydMu    sync.Mutex
	hydrated []int64
	// workers bounds the parallel copy-on-reads of one guest read.
	workers int
	zero    []byte    // a zero block
	bufs    sync.Pool // block buffers for targetZero and fills
}

// maxJournal bounds the active journal file: a guest that writes much and
// never flushes gets a sync point when the journal reaches it.
const maxJournal = 16 << 20

// NewDevice joins a volume, an open target and its bitmap. fresh tells
// that the target was created sparse and empty for this restore. It first
// recovers from a crash or power loss: every block the journal records
// and the bitmap does not vouch for is checked sector by sector, keeping
// what a guest write put there and restoring the backup's bytes
// elsewhere (see doc.go).
func NewDevice(vol Volume, target File, bm *Bitmap, fresh bool) (*Device, error) {
	bs := int64(vol.BlockSize())
	if bm.Blocks() != (vol.Size()+bs-1)/bs {
		return nil, fmt.Errorf("bitmap has %d blocks, volume %d", bm.Blocks(), (vol.Size()+bs-1)/bs)
	}
	if bs%sectorSize != 0 || bm.bs != bs {
		return nil, fmt.Errorf("block size %d: want a multiple of %d equal to the bitmap's (%d)", bs, sectorSize, bm.bs)
	}
	d := &Device{vol: vol, target: target, bm: bm, bs: bs, size: vol.Size(), fresh: fresh, zero: make([]byte, bs), workers: runtime.GOMAXPROCS(0)}
	d.bufs.New = func() any { b := make([]byte, bs); return &b }
	if err := d.recover(); err != nil {
		return nil, err
	}
	return d, nil
}

// recover settles the journal left by a crash or power loss.
func (d *Device) recover() error {
	recs, err := d.bm.j.records()
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	sums := map[int64]map[sectorSum]bool{}
	var blocks []int64
	perBlock := d.bs / sectorSize
	maxSector := (d.size + sectorSize - 1) / sectorSize
	for _, r := range recs {
		if r.sector < 0 || r.sector >= maxSector {
			continue // a torn record
		}
		i := r.sector / perBlock
		if d.bm.Durable(i) {
			continue
		}
		if sums[r.sector] == nil {
			sums[r.sector] = map[sectorSum]bool{}
		}
		sums[r.sector][r.sum] = true
		if len(blocks) == 0 || blocks[len(blocks)-1] != i {
			blocks = append(blocks, i)
		}
	}
	blocks = slices.Compact(slices.Sorted(slices.Values(blocks)))
	buf := make([]byte, d.bs)
	for _, i := range blocks {
		n := d.blockLen(i)
		cur := buf[:n]
		clear(cur) // a short target reads zeroes past its end
		if _, err := d.target.ReadAt(cur, i*d.bs); err != nil && err != io.EOF {
			return fmt.Errorf("recover block %d: read target: %w", i, err)
		}
		var backup []byte
		changed := false
		for off := int64(0); off < n; off += sectorSize {
			sec := cur[off:min(off+sectorSize, n)]
			if sums[(i*d.bs+off)/sectorSize][sumSector(sec)] {
				continue // a guest write's content
			}
			if backup == nil {
				if backup, err = d.vol.Block(context.Background(), i); err != nil {
					return fmt.Errorf("recover block %d: %w", i, err)
				}
			}
			copy(sec, backup[off:])
			changed = true
		}
		if changed {
			if _, err := d.target.WriteAt(cur, i*d.bs); err != nil {
				return fmt.Errorf("recover block %d: write target: %w", i, err)
			}
		}
		d.bm.setHave(i)
	}
	if err := d.target.Sync(); err != nil {
		return fmt.Errorf("recover: sync target: %w", err)
	}
	if err := d.bm.persistDurable(blocks); err != nil {
		return err
	}
	return d.bm.j.reset()
}

// Size returns the disk size.
func (d *Device) Size() int64 { return d.size }

// Bitmap returns the device's bitmap.
func (d *Device) Bitmap() *Bitmap { return d.bm }

func (d *Device) lock(i int64) *sync.Mutex { return &d.locks[i%int64(len(d.locks))] }

// blockLen is the length of block i (the last may be short).
func (d *Device) blockLen(i int64) int64 { return min(d.bs, d.size-i*d.bs) }

// ReadAt reads from the target where it holds the block. A block the
// target does not hold yet is read from the backup (verified) and written
// to the target on the way (copy-on-read): the guest's next read of it
// is a pread, and the hydrator skips it. Blocks that are zero in the
// backup of a fresh target are served as zeroes and left to the
// hydrator. The blocks of one read are fetched in parallel.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	return d.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context (the NBD server cancels the
// reads of a connection that went away).
func (d *Device) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), d.size-off)
	var missing []int64
	for n := int64(0); n < want; {
		pos := off + n
		i := pos / d.bs
		k := min(d.bs-(pos-i*d.bs), want-n)
		if d.bm.Has(i) {
			// Read the run of held blocks in one call.
			for k < want-n && d.bm.Has((pos+k)/d.bs) {
				k = min(k+d.bs, want-n)
			}
			if err := d.readTarget(p[n:n+k], pos); err != nil {
				return int(n), err
			}
		} else {
			missing = append(missing, i)
		}
		n += k
	}
	if err := d.copyOnRead(ctx, missing, p[:want], off); err != nil {
		return 0, err
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

func (d *Device) readTarget(p []byte, pos int64) error {
	if _, err := d.target.ReadAt(p, pos); err != nil && err != io.EOF {
		return fmt.Errorf("read target at %d: %w", pos, err)
	}
	return nil
}

// copyOnRead serves the blocks of a read (p at off) that the target did
// not hold, each with up to d.workers at once.
func (d *Device) copyOnRead(ctx context.Context, blocks []int64, p []byte, off int64) error {
	if len(blocks) == 0 {
		return nil
	}
	one := func(i int64) error {
		from, to := max(off, i*d.bs), min(off+int64(len(p)), (i+1)*d.bs)
		return d.readBlockFill(ctx, i, p[from-off:to-off], from-i*d.bs)
	}
	if len(blocks) == 1 {
		return one(blocks[0])
	}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	for range min(len(blocks), d.workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1) - 1
				if k >= int64(len(blocks)) {
					return
				}
				if err := one(blocks[k]); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// readBlockFill fills dst with block i's bytes from in on. A block the
// target does not hold is copied to it first (under the block's lock),
// unless it is a zero block of a fresh target.
func (d *Device) readBlockFill(ctx context.Context, i int64, dst []byte, in int64) error {
	if !d.bm.Has(i) {
		h, err := d.vol.BlockHash(i)
		if err != nil {
			return err
		}
		if h.IsZero() && d.fresh {
			clear(dst)
			return nil
		}
		// Load outside the lock: the backup does not change, and a guest
		// write to the block need not wait for a decode.
		b, err := d.vol.Block(ctx, i)
		if err != nil {
			return err
		}
		mu := d.lock(i)
		mu.Lock()
		if !d.bm.Has(i) {
			if _, err := d.target.WriteAt(b[:d.blockLen(i)], i*d.bs); err != nil {
				mu.Unlock()
				return fmt.Errorf("write target at %d: %w", i*d.bs, err)
			}
			d.bm.setHave(i)
			d.noteHydrated(i)
			copy(dst, b[in:])
			mu.Unlock()
			return nil
		}
		mu.Unlock()
		// The guest (or the hydrator) got there first: the target has it.
	}
	return d.readTarget(dst, i*d.bs+in)
}

// noteHydrated records that block i's backup bytes are in the target;
// its bit becomes durable at the next sync point.
func (d *Device) noteHydrated(i int64) {
	d.hydMu.Lock()
	d.hydrated = append(d.hydrated, i)
	d.hydMu.Unlock()
}

// hasHydrated reports whether blocks wait for a sync point to get their
// bits.
func (d *Device) hasHydrated() bool {
	d.hydMu.Lock()
	defer d.hydMu.Unlock()
	return len(d.hydrated) > 0
}

// ReadCached reads p at off from the target if it holds every block of
// the range (no backup block to fetch), and reports whether it did.
func (d *Device) ReadCached(p []byte, off int64) bool {
	end := off + int64(len(p))
	if off < 0 || len(p) == 0 || end > d.size {
		return false
	}
	for i := off / d.bs; i <= (end-1)/d.bs; i++ {
		if !d.bm.Has(i) {
			return false
		}
	}
	return d.readTarget(p, off) == nil
}

// Cache copies the blocks of [off, off+n) that the target lacks into it
// now (NBD_CMD_CACHE: the guest will read them).
func (d *Device) Cache(ctx context.Context, off, n int64) error {
	if off < 0 || n <= 0 || off >= d.size {
		return nil
	}
	n = min(n, d.size-off)
	var missing []int64
	for i := off / d.bs; i <= (off+n-1)/d.bs; i++ {
		if !d.bm.Has(i) {
			missing = append(missing, i)
		}
	}
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	// Reading the blocks copies them; the bytes themselves are not needed.
	for _, i := range missing {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.readBlockFill(ctx, i, (*bp)[:0], 0); err != nil {
			return err
		}
	}
	return nil
}

// WriteAt writes guest data to the target. A block written only in part
// is first filled from the backup, so no byte of it is lost. A block whose
// bit is not durable gets journal records of the new sector contents
// before its data is written; the reply comes when both are in the page
// cache (a kill loses nothing; a power loss may lose unflushed writes but
// never leaves bytes other than the backup's or a guest's).
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write [%d, %d) outside the %d-byte disk", off, off+int64(len(p)), d.size)
	}
	for n := int64(0); n < int64(len(p)); {
		pos := off + n
		i := pos / d.bs
		in := pos - i*d.bs
		k := min(d.blockLen(i)-in, int64(len(p))-n)
		mu := d.lock(i)
		mu.Lock()
		err := d.writeBlock(i, in, p[n:n+k])
		mu.Unlock()
		if err != nil {
			return int(n), err
		}
		n += k
	}
	if d.bm.j.activeSize() > maxJournal {
		if err := d.syncPoint(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// writeBlock writes part of block i; the caller holds the block's lock.
func (d *Device) writeBlock(i, in int64, data []byte) error {
	partial := in != 0 || int64(len(data)) != d.blockLen(i)
	fill := !d.bm.Has(i) && partial
	var backup []byte
	if fill {
		var err error
		if backup, err = d.backupBlock(i); err != nil {
			return err
		}
	}
	gen := -1 // the journal file of this write's records; -1: none
	if !d.bm.Durable(i) {
		recs, err := d.records(i, in, data, backup)
		if err != nil {
			return err
		}
		d.gate.RLock()
		defer d.gate.RUnlock()
		if gen, err = d.bm.j.add(recs); err != nil {
			return err
		}
	}
	if fill && backup != nil {
		if _, err := d.target.WriteAt(backup[:d.blockLen(i)], i*d.bs); err != nil {
			return fmt.Errorf("write target at %d: %w", i*d.bs, err)
		}
	}
	if _, err := d.target.WriteAt(data, i*d.bs+in); err != nil {
		return fmt.Errorf("write target at %d: %w", i*d.bs+in, err)
	}
	if gen >= 0 {
		d.bm.j.mark(gen, i)
	}
	d.bm.setHave(i)
	return nil
}

// records returns the journal records of writing data at in of block i:
// the hash of every sector the write touches, as it will read afterwards.
// A sector written in part takes the rest from the backup (when the block
// is about to be filled) or from the target.
func (d *Device) records(i, in int64, data, backup []byte) ([]record, error) {
	n := d.blockLen(i)
	first, last := in/sectorSize, (in+int64(len(data))-1)/sectorSize
	recs := make([]record, 0, last-first+1)
	sec := make([]byte, sectorSize)
	for s := first; s <= last; s++ {
		lo, hi := s*sectorSize, min((s+1)*sectorSize, n)
		cur := sec[:hi-lo]
		if lo < in || hi > in+int64(len(data)) {
			switch {
			case backup != nil:
				copy(cur, backup[lo:hi])
			case !d.bm.Has(i) && d.fresh:
				clear(cur) // fill skipped: a zero block of a new target
			default:
				if _, err := d.target.ReadAt(cur, i*d.bs+lo); err != nil && err != io.EOF {
					return nil, fmt.Errorf("read target at %d: %w", i*d.bs+lo, err)
				}
			}
		}
		copy(cur[max(in-lo, 0):], data[max(lo-in, 0):min(hi-in, int64(len(data)))])
		recs = append(recs, record{sector: (i*d.bs + lo) / sectorSize, sum: sumSector(cur)})
	}
	return recs, nil
}

// backupBlock returns block i of the backup for a fill, or nil when the
// fill can be skipped: a zero block of a fresh target that reads zeroes
// there. (It need not: a write the guest never flushed may have reached
// the disk before a power loss without its journal record; the guest
// has been reading the backup's zeroes since.)
func (d *Device) backupBlock(i int64) ([]byte, error) {
	h, err := d.vol.BlockHash(i)
	if err != nil {
		return nil, err
	}
	if h.IsZero() && d.fresh {
		zero, err := d.targetZero(i)
		if err != nil || zero {
			return nil, err
		}
	}
	return d.vol.Block(context.Background(), i)
}

// targetZero reports whether block i of the target reads all zeroes.
func (d *Device) targetZero(i int64) (bool, error) {
	if inHole(d.target, i*d.bs, d.blockLen(i)) {
		return true, nil // a hole reads zeroes: no need to read it
	}
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	b := (*bp)[:d.blockLen(i)]
	if _, err := d.target.ReadAt(b, i*d.bs); err != nil && err != io.EOF {
		return false, fmt.Errorf("read target at %d: %w", i*d.bs, err)
	}
	return bytes.Equal(b, d.zero[:len(b)]), nil
}

// syncPoint makes the target durable and, with it, the bits of every
// block a guest wrote before it and of the blocks hydrated (by the
// hydrator or a copy-on-read) before it: swap journal files (waiting for
// writes in flight) and take the hydrated list, fdatasync the target,
// write and sync the bits, then empty the settled journal file. Both
// lists are taken before the fdatasync, and a block enters either only
// after its data was written, so every bit persisted vouches for synced
// data.
func (d *Device) syncPoint() error {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.gate.Lock()
	gen, blocks := d.bm.j.swap()
	d.gate.Unlock()
	d.hydMu.Lock()
	hydrated := d.hydrated
	d.hydrated = nil
	d.hydMu.Unlock()
	err := d.target.Sync()
	if err != nil {
		err = fmt.Errorf("sync target: %w", err)
	} else {
		err = d.bm.persistDurable(append(blocks, hydrated...))
	}
	if err != nil {
		d.bm.j.failed(blocks)
		d.hydMu.Lock()
		d.hydrated = append(d.hydrated, hydrated...)
		d.hydMu.Unlock()
		return err
	}
	return d.bm.j.settled(gen)
}

// Trim discards the whole blocks inside [off, off+n); the parts of
// blocks at its edges are left alone (TRIM is advisory). A discarded
// block reads as zeroes, is never copied from the backup (hydration
// skips it), and gives its space back: a hole is punched in a file
// target. Durability is that of a guest write of zeroes: a block whose
// bit is not durable gets journal records of its zeroed sectors first.
func (d *Device) Trim(off, n int64) error {
	if off < 0 || n <= 0 || off+n > d.size {
		return fmt.Errorf("trim [%d, %d) outside the %d-byte disk", off, off+n, d.size)
	}
	first, end := (off+d.bs-1)/d.bs, (off+n)/d.bs
	if off+n == d.size {
		end = d.bm.Blocks() // the short last block
	}
	for i := first; i < end; i++ {
		mu := d.lock(i)
		mu.Lock()
		err := d.discardBlock(i)
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	if d.bm.j.activeSize() > maxJournal {
		return d.syncPoint()
	}
	return nil
}

// discardBlock zeroes block i; the caller holds its lock.
func (d *Device) discardBlock(i int64) error {
	n := d.blockLen(i)
	gen := -1 // the journal file of the zeroes' records; -1: none
	if !d.bm.Durable(i) {
		var recs []record
		for lo := int64(0); lo < n; lo += sectorSize {
			hi := min(lo+sectorSize, n)
			recs = append(recs, record{sector: (i*d.bs + lo) / sectorSize, sum: sumSector(d.zero[:hi-lo])})
		}
		d.gate.RLock()
		defer d.gate.RUnlock()
		var err error
		if gen, err = d.bm.j.add(recs); err != nil {
			return err
		}
	}
	if !punchHole(d.target, i*d.bs, n) {
		if _, err := d.target.WriteAt(d.zero[:n], i*d.bs); err != nil {
			return fmt.Errorf("write target at %d: %w", i*d.bs, err)
		}
	}
	if gen >= 0 {
		d.bm.j.mark(gen, i)
	}
	d.bm.setHave(i)
	return nil
}

// inHole reports whether [off, off+n) of f lies in a hole (SEEK_DATA
// finds no data before its end), which reads as zeroes. False when f has
// no descriptor or the file system cannot tell: the caller reads.
func inHole(f File, off, n int64) bool {
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	next, err := unix.Seek(int(fd.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true // no data from off to the end of the file
	}
	return err == nil && next >= off+n
}

// punchHole deallocates [off, off+n) of f if f is a file descriptor
// that supports it (a file on most Linux file systems, a block device
// that can zero); afterwards the range reads as zeroes. It reports
// whether it did.
func punchHole(f File, off, n int64) bool {
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	return unix.Fallocate(int(fd.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil
}

// WriteZeroes writes zeroes to [off, off+n).
func (d *Device) WriteZeroes(off, n int64) error {
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := d.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Flush makes every acknowledged write durable (NBD FLUSH, and FUA).
func (d *Device) Flush() error { return d.syncPoint() }

// Extents reports allocation: blocks not yet in the target that are zero
// in the backup are holes; everything else is data.
func (d *Device) Extents(off, n int64) ([]extent.Extent, error) {
	return extent.FromBlocks(off, n, d.bs, func(i int64) (bool, error) {
		if d.bm.Has(i) {
			return false, nil
		}
		h, err := d.vol.BlockHash(i)
		return h.IsZero(), err
	})
}

// Close syncs and closes the target and the bitmap.
func (d *Device) Close() error {
	err := d.Flush()
	if cerr := d.target.Close(); err == nil {
		err = cerr
	}
	if cerr := d.bm.Close(); err == nil {
		err = cerr
	}
	return err
}
