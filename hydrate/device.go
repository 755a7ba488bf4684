// Package hydrate is instant restore: a writable disk that a VM can use at
// once, made of a backup volume and a target (image file or block device).
//
// Layers, each small: Bitmap (which blocks the target holds, persistent),
// Device (reads from the target where the bitmap says so and from the
// backup elsewhere; writes go to the target, filling a partly written
// block from the backup first), and Hydrator (copies the remaining blocks
// in the background, rate-limited and pausable). When every block is in
// the target, the target is a plain disk image: the backup plus the
// guest's writes.
//
// Concurrency: block-level locks (striped) make the hydrator and guest
// writes to the same block take turns, so a hydrated copy never lands on
// top of a guest write. Durability follows a disk with a volatile write
// cache: a kill -9 of the daemon loses no acknowledged write (the data and
// its bitmap bit are in the page cache before the reply); FLUSH and FUA
// make writes survive power loss as well.
package hydrate

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"csbs/blockstore"
	"csbs/nbd"
)

// Volume is the backup being restored; *blockstore.Volume implements it.
type Volume interface {
	Size() int64
	BlockSize() int
	BlockHash(i int64) (blockstore.Hash, error)
	Block(ctx context.Context, i int64) ([]byte, error)
}

// Device is the instant-restore disk.
type Device struct {
	vol    Volume
	target *os.File
	bm     *Bitmap
	bs     int64
	size   int64
	// fresh: the target was created empty by us, so blocks that are zero
	// in the backup need no write.
	fresh bool
	locks [1024]sync.Mutex
}

var (
	_ nbd.WritableDevice = (*Device)(nil)
	_ nbd.Zeroer         = (*Device)(nil)
	_ nbd.Extenter       = (*Device)(nil)
)

// NewDevice joins a volume, an open target and its bitmap. fresh tells
// that the target was created sparse and empty for this restore.
func NewDevice(vol Volume, target *os.File, bm *Bitmap, fresh bool) (*Device, error) {
	bs := int64(vol.BlockSize())
	if bm.Blocks() != (vol.Size()+bs-1)/bs {
		return nil, fmt.Errorf("bitmap has %d blocks, volume %d", bm.Blocks(), (vol.Size()+bs-1)/bs)
	}
	return &Device{vol: vol, target: target, bm: bm, bs: bs, size: vol.Size(), fresh: fresh}, nil
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
// is first filled from the backup, so no byte of it is lost.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write [%d, %d) outside the %d-byte disk", off, off+int64(len(p)), d.size)
	}
	var written []int64
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
		written = append(written, i)
		n += k
	}
	// The bits reach the file before the write is acknowledged.
	if err := d.bm.persistBits(written); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeBlock writes part of block i; the caller holds the block's lock.
func (d *Device) writeBlock(i, in int64, data []byte) error {
	partial := in != 0 || int64(len(data)) != d.blockLen(i)
	if !d.bm.Has(i) && partial {
		if err := d.fill(i); err != nil {
			return err
		}
	}
	if _, err := d.target.WriteAt(data, i*d.bs+in); err != nil {
		return fmt.Errorf("write target at %d: %w", i*d.bs+in, err)
	}
	d.bm.setHave(i)
	return nil
}

// fill copies block i from the backup into the target; the caller holds
// the block's lock. It reports whether bytes were written.
func (d *Device) fill(i int64) error {
	h, err := d.vol.BlockHash(i)
	if err != nil {
		return err
	}
	if h.IsZero() && d.fresh {
		return nil // the new target reads zeroes there already
	}
	b, err := d.vol.Block(context.Background(), i)
	if err != nil {
		return err
	}
	if _, err := d.target.WriteAt(b[:d.blockLen(i)], i*d.bs); err != nil {
		return fmt.Errorf("write target at %d: %w", i*d.bs, err)
	}
	return nil
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

// Flush makes the target's data and the bitmap durable.
func (d *Device) Flush() error {
	if err := d.target.Sync(); err != nil {
		return fmt.Errorf("sync target: %w", err)
	}
	return d.bm.Sync()
}

// Extents reports allocation: blocks not yet in the target that are zero
// in the backup are holes; everything else is data.
func (d *Device) Extents(off, n int64) ([]nbd.Extent, error) {
	return nbd.MapExtents(off, n, d.bs, func(i int64) (bool, error) {
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
