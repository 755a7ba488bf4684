package hydrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"csbs/internal/durable"
)

// Bitmap is the persistent record of which blocks the target holds.
//
// Three views: "have" (in memory) says where reads of a block go; the
// bits file says which blocks the target holds durably, and a bit reaches
// it only after an fdatasync of the target covered the block's data;
// "durable" (in memory) is the part of the file that is itself synced.
// Guest writes to blocks whose bit is not durable are recorded in the
// journal first (see doc.go). Bits only ever go from 0 to 1.
//
// File layout: a 32-byte header (magic "CSBSHYD1", block count, block
// size, disk size), then one bit per block, LSB first.
type Bitmap struct {
	f       File
	j       *journal
	nblocks int64
	bs      int64
	size    int64
	have    []atomic.Uint64
	durable []atomic.Uint64

	mu      sync.Mutex // guards persist and bits-file writes
	persist []byte
	count   atomic.Int64 // blocks in have
}

const bitmapMagic = "CSBSHYD1"
const bitmapHeader = 32

// ErrBadBitmap means a bitmap file does not belong to this restore.
var ErrBadBitmap = errors.New("hydration bitmap does not match")

// OpenBitmap opens or creates the bitmap file at path, and its journal
// files path.j0 and path.j1, for a disk of nblocks blocks of bs bytes and
// size bytes. New files are made durable (with their directory entries)
// before it returns.
func OpenBitmap(path string, nblocks int64, bs int, size int64) (*Bitmap, error) {
	var files []*os.File
	fail := func(err error) (*Bitmap, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	created := false
	for _, p := range []string{path, path + ".j0", path + ".j1"} {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fail(fmt.Errorf("open hydration bitmap: %w", err))
		}
		files = append(files, f)
		if fi, err := f.Stat(); err != nil {
			return fail(fmt.Errorf("open hydration bitmap: %w", err))
		} else if fi.Size() == 0 {
			created = true
		}
	}
	b, err := NewBitmap(files[0], [2]File{files[1], files[2]}, nblocks, bs, size)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	if created {
		if err := durable.SyncDir(filepath.Dir(path)); err != nil {
			return fail(err)
		}
	}
	return b, nil
}

// RemoveBitmap removes the files OpenBitmap made at path.
func RemoveBitmap(path string) error {
	var errs []error
	for _, p := range []string{path, path + ".j0", path + ".j1"} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CheckBitmap returns an error naming the first of the files OpenBitmap
// made at path that is missing. A restore reopened after a restart needs
// them all: OpenBitmap would otherwise start an empty bitmap, and
// hydration would copy the backup over blocks the guest wrote.
func CheckBitmap(path string) error {
	for _, p := range []string{path, path + ".j0", path + ".j1"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("hydration state %s: %w", p, err)
		}
	}
	return nil
}

// NewBitmap reads or initialises a bitmap on open files: bits, and the two
// journal files. An empty bits file is a new bitmap.
func NewBitmap(bits File, journal [2]File, nblocks int64, bs int, size int64) (*Bitmap, error) {
	fi, err := bits.Stat()
	if err != nil {
		return nil, err
	}
	words := (nblocks + 63) / 64
	b := &Bitmap{
		f: bits, nblocks: nblocks, bs: int64(bs), size: size,
		have: make([]atomic.Uint64, words), durable: make([]atomic.Uint64, words),
		persist: make([]byte, (nblocks+7)/8),
	}
	if b.j, err = newJournal(journal); err != nil {
		return nil, err
	}
	if fi.Size() == 0 {
		hdr := encodeHeader(nblocks, bs, size)
		if _, err := bits.WriteAt(append(hdr, b.persist...), 0); err != nil {
			return nil, fmt.Errorf("create hydration bitmap: %w", err)
		}
		if err := bits.Sync(); err != nil {
			return nil, fmt.Errorf("create hydration bitmap: %w", err)
		}
		return b, nil
	}
	data := make([]byte, fi.Size())
	if _, err := bits.ReadAt(data, 0); err != nil {
		return nil, fmt.Errorf("read hydration bitmap: %w", err)
	}
	bitsData, err := DecodeBitmap(data, nblocks, bs, size)
	if err != nil {
		return nil, err
	}
	copy(b.persist, bitsData)
	// Bits in the file vouch for synced data, but the file itself may hold
	// bits written since its last sync: make them durable before trusting
	// them as such.
	if err := bits.Sync(); err != nil {
		return nil, fmt.Errorf("sync hydration bitmap: %w", err)
	}
	for i := int64(0); i < nblocks; i++ {
		if bitsData[i/8]&(1<<(i%8)) != 0 {
			b.setHave(i)
			b.durable[i/64].Store(b.durable[i/64].Load() | 1<<(i%64))
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

// Durable reports whether block i's bit is on disk, and with it the
// block's data.
func (b *Bitmap) Durable(i int64) bool { return b.durable[i/64].Load()&(1<<(i%64)) != 0 }

// persistDurable writes the bits of blocks to the file, syncs it and marks the
// bits durable. The blocks' data must be durable already.
func (b *Bitmap) persistDurable(blocks []int64) error {
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
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("sync hydration bitmap: %w", err)
	}
	for _, i := range blocks {
		w := &b.durable[i/64]
		for {
			old := w.Load()
			if w.CompareAndSwap(old, old|1<<(i%64)) {
				break
			}
		}
	}
	return nil
}

// Close closes the bits and journal files.
func (b *Bitmap) Close() error { return firstErr(b.f.Close(), b.j.close()) }

// popcount is used by tests to check the file.
func popcount(bs []byte) int {
	n := 0
	for _, x := range bs {
		n += bits.OnesCount8(x)
	}
	return n
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
