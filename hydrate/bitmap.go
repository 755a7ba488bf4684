package hydrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
)

// Bitmap is the persistent record of which blocks the target holds.
//
// Two views: "have" (in memory) says where reads of a block go, and the
// file says what is known to be in the target after a crash. A block's
// file bit is written only once its data is in the target: right away for
// a guest write (before the write is acknowledged, so a daemon kill cannot
// make the hydrator overwrite it later), and after fdatasync of the target
// for hydrated blocks. Bits only ever go from 0 to 1.
//
// File layout: a 32-byte header (magic "CSBSHYD1", block count, block
// size, disk size), then one bit per block, LSB first.
type Bitmap struct {
	f       *os.File
	nblocks int64
	have    []atomic.Uint64

	mu      sync.Mutex // guards persist and file writes
	persist []byte
	count   atomic.Int64 // blocks in have
}

const bitmapMagic = "CSBSHYD1"
const bitmapHeader = 32

// ErrBadBitmap means a bitmap file does not belong to this restore.
var ErrBadBitmap = errors.New("hydration bitmap does not match")

// OpenBitmap opens or creates the bitmap file at path for a disk of
// nblocks blocks of bs bytes and size bytes.
func OpenBitmap(path string, nblocks int64, bs int, size int64) (*Bitmap, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open hydration bitmap: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	b := &Bitmap{f: f, nblocks: nblocks, have: make([]atomic.Uint64, (nblocks+63)/64), persist: make([]byte, (nblocks+7)/8)}
	if fi.Size() == 0 {
		hdr := encodeHeader(nblocks, bs, size)
		if _, err := f.WriteAt(append(hdr, b.persist...), 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("create hydration bitmap: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		return b, nil
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read hydration bitmap: %w", err)
	}
	bitsData, err := DecodeBitmap(data, nblocks, bs, size)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	copy(b.persist, bitsData)
	for i := int64(0); i < nblocks; i++ {
		if bitsData[i/8]&(1<<(i%8)) != 0 {
			b.have[i/64].Store(b.have[i/64].Load() | 1<<(i%64))
			b.count.Add(1)
		}
	}
	return b, nil
}

func encodeHeader(nblocks int64, bs int, size int64) []byte {
	h := make([]byte, bitmapHeader)
	copy(h, bitmapMagic)
	binary.BigEndian.PutUint64(h[8:], uint64(nblocks))
	binary.BigEndian.PutUint64(h[16:], uint64(bs))
	binary.BigEndian.PutUint64(h[24:], uint64(size))
	return h
}

// DecodeBitmap checks a bitmap file's header against the disk and returns
// its bit bytes. It never panics, whatever data holds.
func DecodeBitmap(data []byte, nblocks int64, bs int, size int64) ([]byte, error) {
	if len(data) < bitmapHeader || string(data[:8]) != bitmapMagic {
		return nil, fmt.Errorf("%w: not a hydration bitmap", ErrBadBitmap)
	}
	be := binary.BigEndian
	n, gotBS, gotSize := be.Uint64(data[8:]), be.Uint64(data[16:]), be.Uint64(data[24:])
	if n != uint64(nblocks) || gotBS != uint64(bs) || gotSize != uint64(size) {
		return nil, fmt.Errorf("%w: file is for %d blocks of %d bytes (%d bytes), restore has %d of %d (%d)", ErrBadBitmap, n, gotBS, gotSize, nblocks, bs, size)
	}
	want := (nblocks + 7) / 8
	if int64(len(data)-bitmapHeader) != want {
		return nil, fmt.Errorf("%w: %d bitmap bytes, want %d", ErrBadBitmap, len(data)-bitmapHeader, want)
	}
	out := data[bitmapHeader:]
	if extra := nblocks % 8; extra != 0 && out[len(out)-1]>>extra != 0 {
		return nil, fmt.Errorf("%w: bits set past the last block", ErrBadBitmap)
	}
	return out, nil
}

// Has reports whether the target holds block i.
func (b *Bitmap) Has(i int64) bool { return b.have[i/64].Load()&(1<<(i%64)) != 0 }

// setHave marks block i as in the target (memory only). It reports
// whether the bit was newly set.
func (b *Bitmap) setHave(i int64) bool {
	w := &b.have[i/64]
	for {
		old := w.Load()
		if old&(1<<(i%64)) != 0 {
			return false
		}
		if w.CompareAndSwap(old, old|1<<(i%64)) {
			b.count.Add(1)
			return true
		}
	}
}

// Count returns the number of blocks in the target.
func (b *Bitmap) Count() int64 { return b.count.Load() }

// Blocks returns the number of blocks of the disk.
func (b *Bitmap) Blocks() int64 { return b.nblocks }

// Complete reports whether every block is in the target.
func (b *Bitmap) Complete() bool { return b.Count() == b.nblocks }

// persistBits writes the file bits of the given blocks (their data must
// already be in the target).
func (b *Bitmap) persistBits(blocks []int64) error {
	if len(blocks) == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	lo, hi := int64(-1), int64(-1)
	for _, i := range blocks {
		byteI := i / 8
		b.persist[byteI] |= 1 << (i % 8)
		if lo < 0 || byteI < lo {
			lo = byteI
		}
		if byteI > hi {
			hi = byteI
		}
	}
	if _, err := b.f.WriteAt(b.persist[lo:hi+1], bitmapHeader+lo); err != nil {
		return fmt.Errorf("write hydration bitmap: %w", err)
	}
	return nil
}

// Sync makes the bitmap file durable.
func (b *Bitmap) Sync() error { return b.f.Sync() }

// Close closes the file.
func (b *Bitmap) Close() error { return b.f.Close() }

// popcount is used by tests to check the file.
func popcount(bs []byte) int {
	n := 0
	for _, x := range bs {
		n += bits.OnesCount8(x)
	}
	return n
}
