package blockstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/zeebo/blake3"
)

// A block map lives in its own file, maps/<id>.map: a header, then one
// fixed-size slot per segment of SegmentEntries hashes, so that block i
// is one pread away. A segment whose blocks are all zero is not written
// (a hole); the map header in the index records which segments exist, so
// a slot that reads as zeros where a segment should be is damage, never
// a run of zero blocks. Deleting a backup deletes its map files, which
// gives their space back at once.
//
//	header  "CSBSMAP2" | map id [16] | block size u32 | entries per segment u32 | disk size u64 | 0 [24]
//	slot i  at mapHeaderSize + i×mapSlotSize: n hashes [32] | BLAKE3(map id‖i‖hashes)[:16]
//
// The checksum is keyed by the map and the slot, so a slot written to the
// wrong place or copied from another map does not verify.
const (
	mapMagic      = "CSBSMAP2"
	mapHeaderSize = 64
	mapSlotSize   = SegmentEntries*HashSize + segmentChecksumSize
)

// segmentChecksumSize is the length of the checksum that ends a segment.
const segmentChecksumSize = 16

// CorruptMapError reports a block map whose file is damaged or missing.
// It is permanent, and a data error (IsDataError).
type CorruptMapError struct {
	Map     MapID
	Segment int64
	Reason  string
}

func (e *CorruptMapError) Error() string {
	return fmt.Sprintf("block map %s segment %d is damaged: %s", e.Map, e.Segment, e.Reason)
}

func (s *Store) mapPath(id MapID) string {
	return filepath.Join(s.dir, mapsDir, id.String()+".map")
}

// encodeSegment returns the stored form of segment seg of map id.
func encodeSegment(id MapID, seg int64, hashes []Hash) []byte {
	out := make([]byte, 0, len(hashes)*HashSize+segmentChecksumSize)
	for i := range hashes {
		out = append(out, hashes[i][:]...)
	}
	sum := segmentChecksum(id, seg, out)
	return append(out, sum[:]...)
}

func segmentChecksum(id MapID, seg int64, body []byte) [segmentChecksumSize]byte {
	h := blake3.New()
	h.Write(id[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seg))
	h.Write(b[:])
	h.Write(body)
	var sum [segmentChecksumSize]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// DecodeSegment parses segment seg of map id holding n hashes from v,
// verifying its checksum. It never panics, whatever v holds.
func DecodeSegment(id MapID, seg int64, n int, v []byte) ([]Hash, error) {
	if n < 1 || n > SegmentEntries {
		return nil, fmt.Errorf("segment of %d entries: want 1..%d", n, SegmentEntries)
	}
	if len(v) != n*HashSize+segmentChecksumSize {
		return nil, fmt.Errorf("segment of %d bytes, want %d", len(v), n*HashSize+segmentChecksumSize)
	}
	body, sum := v[:n*HashSize], v[n*HashSize:]
	want := segmentChecksum(id, seg, body)
	if !bytes.Equal(want[:], sum) {
		return nil, errors.New("segment checksum mismatch")
	}
	hs := make([]Hash, n)
	for i := range hs {
		copy(hs[i][:], body[i*HashSize:])
	}
	return hs, nil
}

// segmentEntries is how many hashes segment seg of a map of nblocks holds.
func segmentEntries(nblocks, seg int64) int {
	return int(min(SegmentEntries, nblocks-seg*SegmentEntries))
}

func segmentsFor(nblocks int64) int64 { return (nblocks + SegmentEntries - 1) / SegmentEntries }

// mapWriter writes the map file of one ingest. GC reads the file while it
// grows; mu keeps it from reading a slot half written.
type mapWriter struct {
	mu      sync.RWMutex
	s       *Store
	id      MapID
	path    string
	f       *os.File
	nblocks int64
	present []byte // bit i: segment i is stored
}

func (s *Store) createMap(id MapID, size int64) (*mapWriter, error) {
	path := s.mapPath(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", id, err)
	}
	nblocks := blocksFor(size, s.blockSize)
	var hdr [mapHeaderSize]byte
	copy(hdr[:], mapMagic)
	copy(hdr[8:], id[:])
	binary.BigEndian.PutUint32(hdr[24:], uint32(s.blockSize))
	binary.BigEndian.PutUint32(hdr[28:], SegmentEntries)
	binary.BigEndian.PutUint64(hdr[32:], uint64(size))
	if _, err := f.WriteAt(hdr[:], 0); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write map %s: %w", id, err)
	}
	return &mapWriter{s: s, id: id, path: path, f: f, nblocks: nblocks, present: make([]byte, (segmentsFor(nblocks)+7)/8)}, nil
}

// writeSegment stores segment seg (skipped when every hash is zero).
func (mw *mapWriter) writeSegment(seg int64, hs []Hash) error {
	allZero := true
	for i := range hs {
		if !hs[i].IsZero() {
			allZero = false
			break
		}
	}
	if allZero {
		return nil
	}
	mw.mu.Lock()
	_, err := mw.f.WriteAt(encodeSegment(mw.id, seg, hs), mapHeaderSize+seg*mapSlotSize)
	mw.mu.Unlock()
	if err != nil {
		return fmt.Errorf("write segment %d of map %s: %w", seg, mw.id, err)
	}
	mw.present[seg/8] |= 1 << (seg % 8)
	return nil
}

// finish makes the map file durable.
func (mw *mapWriter) finish() error {
	if err := fdatasync(mw.f); err != nil {
		return fmt.Errorf("map %s: %w", mw.id, err)
	}
	if err := mw.f.Close(); err != nil {
		return fmt.Errorf("close map %s: %w", mw.id, err)
	}
	mw.f = nil
	return syncDir(filepath.Dir(mw.path))
}

// close closes the file without removing it.
func (mw *mapWriter) close() {
	mw.mu.Lock()
	defer mw.mu.Unlock()
	if mw.f != nil {
		mw.f.Close()
		mw.f = nil
	}
}

func (mw *mapWriter) abort() {
	if mw.f != nil {
		mw.f.Close()
		mw.f = nil
	}
	os.Remove(mw.path)
}

// segmentPresent reports whether info's map stores segment seg.
func (m *MapInfo) segmentPresent(seg int64) bool {
	i := seg / 8
	return i < int64(len(m.Segments)) && m.Segments[i]&(1<<(seg%8)) != 0
}

// readSegment reads and verifies one stored segment of a committed map.
func (s *Store) readSegment(info *MapInfo, seg int64) ([]Hash, error) {
	cf, err := s.mapFiles.acquire(s.mapPath(info.ID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &CorruptMapError{Map: info.ID, Segment: seg, Reason: "map file is missing"}
	}
	if err != nil {
		return nil, fmt.Errorf("open map %s: %w", info.ID, err)
	}
	defer s.mapFiles.release(cf)
	n := segmentEntries(info.Blocks(), seg)
	buf := make([]byte, n*HashSize+segmentChecksumSize)
	if _, err := cf.f.ReadAt(buf, mapHeaderSize+seg*mapSlotSize); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &CorruptMapError{Map: info.ID, Segment: seg, Reason: "map file is truncated"}
		}
		return nil, fmt.Errorf("read map %s segment %d: %w", info.ID, seg, err)
	}
	hs, err := DecodeSegment(info.ID, seg, n, buf)
	if err != nil {
		return nil, &CorruptMapError{Map: info.ID, Segment: seg, Reason: err.Error()}
	}
	return hs, nil
}

// eachMapSegment calls fn with every stored segment of map id in order,
// reading the file in large requests. With info (a committed map) every
// segment its header lists must be there and verify; without (a map
// still being written, read under its writer's lock) the size comes from
// the file header and slots not yet written are skipped. A missing file
// is fs.ErrNotExist.
func (s *Store) eachMapSegment(ctx context.Context, id MapID, info *MapInfo, writer *mapWriter, fn func(seg int64, hs []Hash) error) error {
	f, err := os.Open(s.mapPath(id))
	if err != nil {
		return err
	}
	defer f.Close()
	var hdr [mapHeaderSize]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return &CorruptMapError{Map: id, Segment: -1, Reason: "header: " + err.Error()}
	}
	if string(hdr[:8]) != mapMagic || !bytes.Equal(hdr[8:24], id[:]) || binary.BigEndian.Uint32(hdr[24:]) != uint32(s.blockSize) {
		return &CorruptMapError{Map: id, Segment: -1, Reason: "header does not belong to this map"}
	}
	size := int64(binary.BigEndian.Uint64(hdr[32:]))
	if info != nil && info.Size != size {
		return &CorruptMapError{Map: id, Segment: -1, Reason: fmt.Sprintf("file says %d bytes, header %d", size, info.Size)}
	}
	nblocks := blocksFor(size, s.blockSize)
	nseg := segmentsFor(nblocks)
	const chunk = 32
	buf := make([]byte, chunk*mapSlotSize)
	for first := int64(0); first < nseg; first += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(chunk, nseg-first)
		span := buf[:(k-1)*mapSlotSize+int64(segmentEntries(nblocks, first+k-1))*HashSize+segmentChecksumSize]
		if writer != nil {
			writer.mu.RLock()
		}
		n, err := f.ReadAt(span, mapHeaderSize+first*mapSlotSize)
		if writer != nil {
			writer.mu.RUnlock()
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read map %s: %w", id, err)
		}
		clear(span[n:]) // past the end of a file still being written: not yet written
		for j := int64(0); j < k; j++ {
			seg := first + j
			want := info == nil || info.segmentPresent(seg)
			if !want {
				continue
			}
			entries := segmentEntries(nblocks, seg)
			slot := span[j*mapSlotSize : j*mapSlotSize+int64(entries)*HashSize+segmentChecksumSize]
			if info == nil && IsZeroBlock(slot) {
				continue
			}
			hs, err := DecodeSegment(id, seg, entries, slot)
			if err != nil {
				return &CorruptMapError{Map: id, Segment: seg, Reason: err.Error()}
			}
			if err := fn(seg, hs); err != nil {
				return err
			}
		}
	}
	return nil
}
