package hydrate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"csbs/internal/extent"
	"csbs/restore"
)

// Device is the instant-restore disk.
type Device struct {
	vol    restore.Volume // the backup being restored
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
	zero   []byte    // a zero block
	bufs   sync.Pool // block buffers for targetZero
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
func NewDevice(vol restore.Volume, target File, bm *Bitmap, fresh bool) (*Device, error) {
	bs := int64(vol.BlockSize())
	if bm.Blocks() != (vol.Size()+bs-1)/bs {
		return nil, fmt.Errorf("bitmap has %d blocks, volume %d", bm.Blocks(), (vol.Size()+bs-1)/bs)
	}
	if bs%sectorSize != 0 || bm.bs != bs {
		return nil, fmt.Errorf("block size %d: want a multiple of %d equal to the bitmap's (%d)", bs, sectorSize, bm.bs)
	}
	d := &Device{vol: vol, target: target, bm: bm, bs: bs, size: vol.Size(), fresh: fresh, zero: make([]byte, bs)}
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

// ReadAt reads from the target where it holds the block, else from the
// backup (verified).
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), d.size-off)
	for n := int64(0); n < want; {
		pos := off + n
		i := pos / d.bs
		in := pos - i*d.bs
		k := min(d.bs-in, want-n)
		if d.bm.Has(i) {
			// Read the run of held blocks in one call.
			for k < want-n && d.bm.Has((pos+k)/d.bs) {
				k = min(k+d.bs, want-n)
			}
			if _, err := d.target.ReadAt(p[n:n+k], pos); err != nil && err != io.EOF {
				return int(n), fmt.Errorf("read target at %d: %w", pos, err)
			}
		} else {
			b, err := d.vol.Block(context.Background(), i)
			if err != nil {
				return int(n), err
			}
			copy(p[n:n+k], b[in:])
		}
		n += k
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
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
		if err := d.syncPoint(nil); err != nil {
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
	if !d.bm.Durable(i) {
		recs, err := d.records(i, in, data, backup)
		if err != nil {
			return err
		}
		d.gate.RLock()
		defer d.gate.RUnlock()
		if err := d.bm.j.add(i, recs); err != nil {
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
	bp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bp)
	b := (*bp)[:d.blockLen(i)]
	if _, err := d.target.ReadAt(b, i*d.bs); err != nil && err != io.EOF {
		return false, fmt.Errorf("read target at %d: %w", i*d.bs, err)
	}
	return bytes.Equal(b, d.zero[:len(b)]), nil
}

// fill copies block i from the backup into the target; the caller holds
// the block's lock. It reports whether it wrote.
func (d *Device) fill(i int64) (bool, error) {
	b, err := d.backupBlock(i)
	if err != nil || b == nil {
		return false, err
	}
	if _, err := d.target.WriteAt(b[:d.blockLen(i)], i*d.bs); err != nil {
		return false, fmt.Errorf("write target at %d: %w", i*d.bs, err)
	}
	return true, nil
}

// syncPoint makes the target durable and, with it, the bits of every
// block a guest wrote before it and of the hydrated blocks given: swap
// journal files (waiting for writes in flight), fdatasync the target,
// write and sync the bits, then empty the settled journal file.
func (d *Device) syncPoint(hydrated []int64) error {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.gate.Lock()
	gen, blocks := d.bm.j.swap()
	d.gate.Unlock()
	err := d.target.Sync()
	if err != nil {
		err = fmt.Errorf("sync target: %w", err)
	} else {
		err = d.bm.persistDurable(append(blocks, hydrated...))
	}
	if err != nil {
		d.bm.j.failed(blocks)
		return err
	}
	return d.bm.j.settled(gen)
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
func (d *Device) Flush() error { return d.syncPoint(nil) }

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
