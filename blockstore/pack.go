package blockstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/zeebo/blake3"
)

// A pack is an immutable file of block values, written once by one ingest
// (or by GC when it repacks) and never changed. Deleting a backup frees
// its blocks by index; GC gives the bytes back by deleting packs that hold
// no live block and by copying the live blocks out of packs that are
// mostly garbage. Layout:
//
//	header   "CSBSPK02" | pack number u64 | block size u32 | 0 u32       (24 B)
//	records  hash [32] | value length u32 | value (codec byte + payload)
//	footer   n × (hash [32] | value offset u32 | value length u32)
//	trailer  n u32 | footer length u32 | BLAKE3(header‖footer entries‖n)[:16] | "CSBSPEND"
//
// The index maps a hash to (pack, value offset, value length); the footer
// lists the same, so the index of a pack can be rebuilt from the pack
// alone, and the records can be walked without the footer.
const (
	packMagic        = "CSBSPK02"
	packEndMagic     = "CSBSPEND"
	packHeaderSize   = 24
	packRecordHeader = HashSize + 4
	packFooterEntry  = HashSize + 8
	packTrailerSize  = 4 + 4 + 16 + 8
	// DefaultPackSize is the size at which an ingest seals a pack.
	DefaultPackSize = 16 << 20
	// MaxPackSize bounds pack sizes (offsets are 32-bit).
	MaxPackSize = 128 << 20
)

// ErrPackNotFound means a pack does not exist (any more).
var ErrPackNotFound = errors.New("pack not found")

// location is where a block's value lives.
type location struct {
	pack uint64
	off  uint32 // offset of the value in the pack
	len  uint32 // length of the value
}

func (l location) encode() []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, l.pack)
	binary.BigEndian.PutUint32(b[8:], l.off)
	binary.BigEndian.PutUint32(b[12:], l.len)
	return b
}

func decodeLocation(b []byte) (location, error) {
	if len(b) != 16 {
		return location{}, fmt.Errorf("index entry of %d bytes, want 16", len(b))
	}
	return location{
		pack: binary.BigEndian.Uint64(b),
		off:  binary.BigEndian.Uint32(b[8:]),
		len:  binary.BigEndian.Uint32(b[12:]),
	}, nil
}

func (l location) String() string {
	return fmt.Sprintf("pack %016x offset %d length %d", l.pack, l.off, l.len)
}

// packInfo is a pack's entry in the pack table (key p/<num>), written in
// the same batch as the index entries of its blocks.
type packInfo struct {
	Num     uint64
	Size    int64
	Blocks  uint32
	Created time.Time
}

func (p packInfo) encode() []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint64(b, uint64(p.Size))
	binary.BigEndian.PutUint32(b[8:], p.Blocks)
	binary.BigEndian.PutUint64(b[12:], uint64(p.Created.Unix()))
	return b
}

func decodePackInfo(num uint64, b []byte) (packInfo, error) {
	if len(b) != 20 {
		return packInfo{}, fmt.Errorf("pack table entry %016x of %d bytes, want 20", num, len(b))
	}
	return packInfo{
		Num:     num,
		Size:    int64(binary.BigEndian.Uint64(b)),
		Blocks:  binary.BigEndian.Uint32(b[8:]),
		Created: time.Unix(int64(binary.BigEndian.Uint64(b[12:])), 0).UTC(),
	}, nil
}

// packEntry is one block in a pack.
type packEntry struct {
	h   Hash
	loc location
}

// packWriter appends records to a staged pack file. One goroutine uses it.
type packWriter struct {
	s       *Store
	num     uint64
	path    string
	f       *os.File
	w       *bufio.Writer
	off     int64
	entries []packEntry
	sealed  bool
	settled bool
}

// newPackWriter allocates a pack number (registered as being written, so
// GC leaves the pack alone until it is indexed) and creates its staging
// file.
func (s *Store) newPackWriter() (*packWriter, error) {
	num, err := s.allocPack()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(s.dir, stagingDir, fmt.Sprintf("%016x.pack", num))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		s.settlePack(num)
		return nil, fmt.Errorf("create pack %016x: %w", num, err)
	}
	pw := &packWriter{s: s, num: num, path: path, f: f, w: bufio.NewWriterSize(f, 1<<20)}
	var hdr [packHeaderSize]byte
	copy(hdr[:], packMagic)
	binary.BigEndian.PutUint64(hdr[8:], num)
	binary.BigEndian.PutUint32(hdr[16:], uint32(s.blockSize))
	if _, err := pw.w.Write(hdr[:]); err != nil {
		pw.release()
		return nil, fmt.Errorf("write pack %016x: %w", num, err)
	}
	pw.off = packHeaderSize
	return pw, nil
}

// add appends one block value and returns where it will live.
func (pw *packWriter) add(h Hash, v []byte) (location, error) {
	var rh [packRecordHeader]byte
	copy(rh[:], h[:])
	binary.BigEndian.PutUint32(rh[HashSize:], uint32(len(v)))
	if _, err := pw.w.Write(rh[:]); err != nil {
		return location{}, fmt.Errorf("write pack %016x: %w", pw.num, err)
	}
	if _, err := pw.w.Write(v); err != nil {
		return location{}, fmt.Errorf("write pack %016x: %w", pw.num, err)
	}
	loc := location{pack: pw.num, off: uint32(pw.off + packRecordHeader), len: uint32(len(v))}
	pw.off += packRecordHeader + int64(len(v))
	pw.entries = append(pw.entries, packEntry{h, loc})
	return loc, nil
}

// full reports whether the pack reached the store's pack size.
func (pw *packWriter) full() bool { return pw.off >= int64(pw.s.opts.PackSize) }

// seal writes the footer, syncs the file and hands it to the pack store.
// The pack is durable when seal returns; its blocks are not yet indexed.
func (pw *packWriter) seal(ctx context.Context) (packInfo, error) {
	footer := encodePackFooter(pw.num, pw.s.blockSize, pw.entries)
	if _, err := pw.w.Write(footer); err != nil {
		return packInfo{}, fmt.Errorf("write pack %016x: %w", pw.num, err)
	}
	if err := pw.w.Flush(); err != nil {
		return packInfo{}, fmt.Errorf("write pack %016x: %w", pw.num, err)
	}
	size := pw.off + int64(len(footer))
	if err := fdatasync(pw.f); err != nil {
		return packInfo{}, fmt.Errorf("pack %016x: %w", pw.num, err)
	}
	if err := pw.f.Close(); err != nil {
		return packInfo{}, fmt.Errorf("close pack %016x: %w", pw.num, err)
	}
	pw.f = nil
	pw.sealed = true
	if err := pw.s.packs.Put(ctx, pw.num, pw.path, size); err != nil {
		os.Remove(pw.path)
		return packInfo{}, fmt.Errorf("store pack %016x: %w", pw.num, err)
	}
	return packInfo{Num: pw.num, Size: size, Blocks: uint32(len(pw.entries)), Created: time.Now().UTC()}, nil
}

// release ends the writer: an unsealed pack is dropped, and the number
// stops being "written", so GC may delete the pack unless its blocks were
// indexed (a sealed pack never indexed is an orphan). Safe to call twice.
func (pw *packWriter) release() {
	if !pw.sealed && pw.f != nil {
		pw.f.Close()
		pw.f = nil
		os.Remove(pw.path)
	}
	if !pw.settled {
		pw.settled = true
		pw.s.settlePack(pw.num)
	}
}

func encodePackFooter(num uint64, blockSize int, entries []packEntry) []byte {
	out := make([]byte, 0, len(entries)*packFooterEntry+packTrailerSize)
	for _, e := range entries {
		out = append(out, e.h[:]...)
		out = binary.BigEndian.AppendUint32(out, e.loc.off)
		out = binary.BigEndian.AppendUint32(out, e.loc.len)
	}
	out = binary.BigEndian.AppendUint32(out, uint32(len(entries)))
	out = binary.BigEndian.AppendUint32(out, uint32(len(entries)*packFooterEntry+packTrailerSize))
	sum := footerChecksum(num, blockSize, out[:len(out)-4])
	out = append(out, sum[:]...)
	return append(out, packEndMagic...)
}

func footerChecksum(num uint64, blockSize int, entriesAndCount []byte) [16]byte {
	h := blake3.New()
	var hdr [packHeaderSize]byte
	copy(hdr[:], packMagic)
	binary.BigEndian.PutUint64(hdr[8:], num)
	binary.BigEndian.PutUint32(hdr[16:], uint32(blockSize))
	h.Write(hdr[:])
	h.Write(entriesAndCount)
	var sum [16]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// readPackFooter reads and checks the footer of pack num of the given
// size: the list of its blocks.
func (s *Store) readPackFooter(ctx context.Context, num uint64, size int64) ([]packEntry, error) {
	if size < packHeaderSize+packTrailerSize {
		return nil, fmt.Errorf("pack %016x: %d bytes is too short", num, size)
	}
	var tr [packTrailerSize]byte
	if _, err := s.packs.ReadAt(ctx, num, tr[:], size-packTrailerSize); err != nil {
		return nil, fmt.Errorf("read pack %016x trailer: %w", num, err)
	}
	if string(tr[24:]) != packEndMagic {
		return nil, fmt.Errorf("pack %016x: no footer (bad end magic)", num)
	}
	n := int64(binary.BigEndian.Uint32(tr[0:]))
	flen := int64(binary.BigEndian.Uint32(tr[4:]))
	if flen != n*packFooterEntry+packTrailerSize || flen > size-packHeaderSize {
		return nil, fmt.Errorf("pack %016x: footer of %d entries does not fit %d bytes", num, n, flen)
	}
	body := make([]byte, flen-packTrailerSize+4)
	if _, err := s.packs.ReadAt(ctx, num, body[:flen-packTrailerSize], size-flen); err != nil {
		return nil, fmt.Errorf("read pack %016x footer: %w", num, err)
	}
	copy(body[flen-packTrailerSize:], tr[:4])
	if sum := footerChecksum(num, s.blockSize, body); !bytes.Equal(sum[:], tr[8:24]) {
		return nil, fmt.Errorf("pack %016x: footer checksum mismatch", num)
	}
	entries := make([]packEntry, n)
	recordsEnd := size - flen
	for i := range entries {
		e := body[int64(i)*packFooterEntry:]
		copy(entries[i].h[:], e[:HashSize])
		entries[i].loc = location{pack: num, off: binary.BigEndian.Uint32(e[HashSize:]), len: binary.BigEndian.Uint32(e[HashSize+4:])}
		if int64(entries[i].loc.off)+int64(entries[i].loc.len) > recordsEnd || entries[i].loc.off < packHeaderSize+packRecordHeader {
			return nil, fmt.Errorf("pack %016x: footer entry %d (%s) outside the records", num, i, entries[i].loc)
		}
	}
	return entries, nil
}

// packReader reads a pack front to back in large requests, for GC and
// scrub, which visit every record of a pack.
type packReader struct {
	s    *Store
	ctx  context.Context
	num  uint64
	size int64
	buf  []byte
	base int64 // pack offset of buf[0]
}

func (s *Store) newPackReader(ctx context.Context, num uint64, size int64) *packReader {
	return &packReader{s: s, ctx: ctx, num: num, size: size}
}

// slice returns the bytes [off, off+n) of the pack, reading ahead in
// 4 MiB requests. The slice is valid until the next call.
func (r *packReader) slice(off int64, n int) ([]byte, error) {
	end := off + int64(n)
	if end > r.size {
		return nil, fmt.Errorf("pack %016x: read of %d bytes at %d past its end %d", r.num, n, off, r.size)
	}
	if off >= r.base && end <= r.base+int64(len(r.buf)) {
		return r.buf[off-r.base : end-r.base], nil
	}
	want := max(int64(n), min(4<<20, r.size-off))
	if int64(cap(r.buf)) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	if _, err := r.s.packs.ReadAt(r.ctx, r.num, r.buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read pack %016x at %d: %w", r.num, off, err)
	}
	r.base = off
	return r.buf[:n], nil
}
