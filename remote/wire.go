package remote

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/zeebo/blake3"

	"csbs/blockstore"
	"csbs/catalog"
)

// HashAlgorithm names the block hash both appliances must use for their
// stores to share blocks: BLAKE3 with 256-bit output, unkeyed (what
// blockstore.HashBlock computes).
const HashAlgorithm = "blake3-256"

// MaxBatch is the most blocks one POST .../blocks may ask for.
const MaxBatch = 256

// Identity is what a source appliance says about itself and the token
// that asked (GET /v1/replication/identity).
type Identity struct {
	Region    string `json:"region"`
	Project   string `json:"project"` // the project the token reads
	BlockSize int    `json:"block_size"`
	Hash      string `json:"hash"`
	Version   string `json:"version"`
	MaxBatch  int    `json:"max_batch"`
}

// DiskInfo is one disk of a backup on the source.
type DiskInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Blocks int64  `json:"data_blocks"`
}

// BackupInfo is a backup as the source shows it to a replication token.
type BackupInfo struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	ServerID   string     `json:"server_id"`
	ServerName string     `json:"server_name"`
	Type       string     `json:"type"`
	Trigger    string     `json:"trigger"`
	Full       bool       `json:"full"`
	Created    time.Time  `json:"created"`
	Region     string     `json:"region"`
	Status     string     `json:"status"`
	Damaged    bool       `json:"damaged"`
	Replica    bool       `json:"replica"` // a replica itself, never replicated again
	TypeReason string     `json:"type_reason,omitempty"`
	Disks      []DiskInfo `json:"disks"`
}

// Size is the sum of the disk sizes.
func (b BackupInfo) Size() int64 {
	var n int64
	for _, d := range b.Disks {
		n += d.Size
	}
	return n
}

// Qualifies says why a backup may not be replicated (nil: it may): only
// complete, undamaged backups made on the source qualify.
func (b BackupInfo) Qualifies() error {
	switch {
	case b.Status != "available":
		return fmt.Errorf("backup %s is %s on the remote; only available backups are replicated", b.Name, b.Status)
	case b.Damaged:
		return fmt.Errorf("backup %s is damaged on the remote (its scrub found a bad block); only undamaged backups are replicated", b.Name)
	case b.Replica:
		return fmt.Errorf("backup %s is itself a replica on the remote; replicas are not replicated again (replicate from the appliance that made it)", b.Name)
	case len(b.Disks) == 0:
		return fmt.Errorf("backup %s has no disks", b.Name)
	}
	return nil
}

// MaxDisks bounds the disks of a backup a remote describes (a server
// has at most 64).
const MaxDisks = 64

// MaxDiskSize bounds the size of a disk a remote describes (1 PiB): the
// destination's memory for a transfer grows with it.
const MaxDiskSize = 1 << 50

// Check refuses a BackupInfo that a well-behaved appliance cannot have
// sent. Its ids and names become file names, catalog records and FUSE
// paths at the destination, so a hostile remote must not choose them
// freely: ids have the catalog's form, names the catalog's rules, disks
// are few, distinct and of a bounded size, and the creation time is not
// in the future (beyond a day of clock skew).
func (b BackupInfo) Check(now time.Time) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("remote sent an invalid backup %q: %s", b.ID, fmt.Sprintf(format, a...))
	}
	switch {
	case !catalog.IsID(catalog.KindBackup, b.ID):
		return bad("id is not a backup id")
	case !catalog.IsID(catalog.KindServer, b.ServerID):
		return bad("server id %q is not a server id", b.ServerID)
	case b.Type != catalog.TypeCommon && b.Type != catalog.TypeEnhanced:
		return bad("type %q", b.Type)
	case b.Trigger != catalog.TriggerManual && b.Trigger != catalog.TriggerAuto:
		return bad("trigger %q", b.Trigger)
	case b.Created.After(now.Add(24 * time.Hour)):
		return bad("created %s, in the future", b.Created.Format(time.RFC3339))
	case len(b.Disks) > MaxDisks:
		return bad("%d disks (at most %d)", len(b.Disks), MaxDisks)
	}
	if err := catalog.ValidateName("backup", b.Name); err != nil {
		return bad("%v", err)
	}
	if err := catalog.ValidateName("server", b.ServerName); err != nil {
		return bad("%v", err)
	}
	seen := map[string]bool{}
	for _, d := range b.Disks {
		if err := catalog.ValidateDiskName(d.Name); err != nil {
			return bad("%v", err)
		}
		if seen[d.Name] {
			return bad("disk %s twice", d.Name)
		}
		seen[d.Name] = true
		if d.Size < 0 || d.Size > MaxDiskSize || d.Blocks < 0 {
			return bad("disk %s of %d bytes, %d blocks", d.Name, d.Size, d.Blocks)
		}
	}
	return nil
}

// --- block map stream ---
//
// GET .../disks/{disk}/map streams a disk's block map:
//
//	header:  "CSBSMAP1" | size u64 | block size u32 | base u8
//	frames:  kind u8 | segment u64 | digest 16 B | payload
//	end:     kind 0 | number of segment frames u64 | 16 zero bytes
//
// Segments that are all zero blocks are not sent. A FULL frame carries
// the segment's hashes; when the request named a base backup (base = 1),
// SAME means "as the base's segment" and DELTA carries a bitmap of the
// entries that differ from the base plus those entries' hashes. The
// digest (BLAKE3 of the segment number and its hashes, 16 bytes) lets the
// receiver check what it rebuilt from its copy of the base.

const mapMagic = "CSBSMAP1"

const (
	frameEnd   = 0
	frameFull  = 1
	frameSame  = 2
	frameDelta = 3
)

// MapHeader opens a map stream.
type MapHeader struct {
	Size      int64
	BlockSize int
	Base      bool // frames may refer to the base map
}

// Blocks is the number of blocks of the disk.
func (h MapHeader) Blocks() int64 { return (h.Size + int64(h.BlockSize) - 1) / int64(h.BlockSize) }

// SegmentEntries is how many hashes segment seg holds.
func (h MapHeader) SegmentEntries(seg int64) int {
	return int(min(blockstore.SegmentEntries, h.Blocks()-seg*blockstore.SegmentEntries))
}

// Segments is the number of segments of the map.
func (h MapHeader) Segments() int64 {
	return (h.Blocks() + blockstore.SegmentEntries - 1) / blockstore.SegmentEntries
}

func segmentDigest(seg int64, hs []blockstore.Hash) [16]byte {
	d := blake3.New()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seg))
	d.Write(b[:])
	for i := range hs {
		d.Write(hs[i][:])
	}
	var out [16]byte
	copy(out[:], d.Sum(nil))
	return out
}

// MapWriter writes a map stream.
type MapWriter struct {
	w      *bufio.Writer
	h      MapHeader
	frames uint64
	last   int64
}

// NewMapWriter writes the header of a map stream.
func NewMapWriter(w io.Writer, h MapHeader) (*MapWriter, error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [8 + 8 + 4 + 1]byte
	copy(hdr[:], mapMagic)
	binary.BigEndian.PutUint64(hdr[8:], uint64(h.Size))
	binary.BigEndian.PutUint32(hdr[16:], uint32(h.BlockSize))
	if h.Base {
		hdr[20] = 1
	}
	_, err := bw.Write(hdr[:])
	return &MapWriter{w: bw, h: h, last: -1}, err
}

// Segment writes segment seg (ascending order). base is the base map's
// segment (zero hashes for a zero segment); nil without a base.
func (m *MapWriter) Segment(seg int64, hs, base []blockstore.Hash) error {
	if seg <= m.last || seg >= m.h.Segments() || len(hs) != m.h.SegmentEntries(seg) {
		return fmt.Errorf("map stream: segment %d of %d entries out of order or size", seg, len(hs))
	}
	m.last = seg
	m.frames++
	kind := byte(frameFull)
	var bitmap []byte
	differ := len(hs)
	if m.h.Base && base != nil {
		bitmap = make([]byte, (len(hs)+7)/8)
		differ = 0
		for i := range hs {
			if i >= len(base) || hs[i] != base[i] {
				bitmap[i/8] |= 1 << (i % 8)
				differ++
			}
		}
		switch {
		case differ == 0:
			kind = frameSame
		case len(bitmap)+differ*blockstore.HashSize < len(hs)*blockstore.HashSize:
			kind = frameDelta
		}
	}
	var fh [1 + 8 + 16]byte
	fh[0] = kind
	binary.BigEndian.PutUint64(fh[1:], uint64(seg))
	dg := segmentDigest(seg, hs)
	copy(fh[9:], dg[:])
	if _, err := m.w.Write(fh[:]); err != nil {
		return err
	}
	switch kind {
	case frameFull:
		for i := range hs {
			if _, err := m.w.Write(hs[i][:]); err != nil {
				return err
			}
		}
	case frameDelta:
		if _, err := m.w.Write(bitmap); err != nil {
			return err
		}
		for i := range hs {
			if bitmap[i/8]&(1<<(i%8)) != 0 {
				if _, err := m.w.Write(hs[i][:]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// End writes the end frame and flushes.
func (m *MapWriter) End() error {
	var fh [1 + 8 + 16]byte
	binary.BigEndian.PutUint64(fh[1:], m.frames)
	if _, err := m.w.Write(fh[:]); err != nil {
		return err
	}
	return m.w.Flush()
}

// ErrBadStream means a stream from the remote did not parse; it is not
// retried.
var ErrBadStream = errors.New("malformed stream from the remote")

func badStream(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadStream, fmt.Sprintf(format, a...))
}

// ReadMap reads a map stream, calling fn with every segment that is not
// all zero, in ascending order. base returns the receiver's copy of the
// base map's segment seg of n entries (zero hashes for a zero segment);
// it is called only when the stream refers to the base. The slice given
// to fn is fn's to keep.
func ReadMap(r io.Reader, base func(seg int64, n int) ([]blockstore.Hash, error), fn func(h MapHeader, seg int64, hs []blockstore.Hash) error) (MapHeader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	var hdr [21]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return MapHeader{}, fmt.Errorf("map stream header: %w", err)
	}
	if string(hdr[:8]) != mapMagic {
		return MapHeader{}, badStream("map stream starts with %q", hdr[:8])
	}
	h := MapHeader{Size: int64(binary.BigEndian.Uint64(hdr[8:])), BlockSize: int(binary.BigEndian.Uint32(hdr[16:])), Base: hdr[20] == 1}
	if h.Size < 0 || h.BlockSize < 4096 || h.BlockSize > 4<<20 || hdr[20] > 1 {
		return h, badStream("map header: size %d, block size %d", h.Size, h.BlockSize)
	}
	if h.Base && base == nil {
		// The reader named no base, so it has none to take segments from.
		return h, badStream("map stream has a base the reader did not ask for")
	}
	var frames uint64
	last := int64(-1)
	for {
		var fh [25]byte
		if _, err := io.ReadFull(br, fh[:]); err != nil {
			return h, fmt.Errorf("map stream after %d segments: %w", frames, err)
		}
		seg := int64(binary.BigEndian.Uint64(fh[1:]))
		switch fh[0] {
		case frameEnd:
			if uint64(seg) != frames {
				return h, badStream("map stream ends after %d segments, says %d", frames, seg)
			}
			return h, nil
		case frameFull, frameSame, frameDelta:
		default:
			return h, badStream("map frame kind %d", fh[0])
		}
		if seg <= last || seg < 0 || seg >= h.Segments() {
			return h, badStream("map segment %d after %d (of %d)", seg, last, h.Segments())
		}
		last = seg
		frames++
		n := h.SegmentEntries(seg)
		hs := make([]blockstore.Hash, n)
		if fh[0] != frameFull {
			if !h.Base {
				return h, badStream("map segment %d refers to a base the stream has not", seg)
			}
			b, err := base(seg, n)
			if err != nil {
				return h, err
			}
			copy(hs, b)
		}
		switch fh[0] {
		case frameFull:
			for i := range hs {
				if _, err := io.ReadFull(br, hs[i][:]); err != nil {
					return h, fmt.Errorf("map segment %d: %w", seg, err)
				}
			}
		case frameDelta:
			bitmap := make([]byte, (n+7)/8)
			if _, err := io.ReadFull(br, bitmap); err != nil {
				return h, fmt.Errorf("map segment %d: %w", seg, err)
			}
			for i := range hs {
				if bitmap[i/8]&(1<<(i%8)) != 0 {
					if _, err := io.ReadFull(br, hs[i][:]); err != nil {
						return h, fmt.Errorf("map segment %d: %w", seg, err)
					}
				}
			}
		}
		if dg := segmentDigest(seg, hs); !bytes.Equal(dg[:], fh[9:]) {
			if fh[0] == frameFull {
				return h, badStream("map segment %d does not match its digest", seg)
			}
			return h, ErrBaseMismatch
		}
		if err := fn(h, seg, hs); err != nil {
			return h, err
		}
	}
}

// ErrBaseMismatch means a segment rebuilt from the receiver's copy of
// the base map does not match the source's: the base replica differs
// from the source's base backup. Fetching the map without a base fixes
// it.
var ErrBaseMismatch = errors.New("map rebuilt from the local base replica does not match the remote's")

// --- block batches ---
//
// POST .../blocks asks for up to MaxBatch blocks of one backup, each
// named by its place in the backup (which the source checks, so that a
// token reads only blocks of backups it may read):
//
//	request:  count u32 | count × (disk index u16 | block index u64 | hash 32 B)
//	response: count × (status u8 | length u32 | payload)
//
// status 0: the payload is the block's stored value (codec byte and
// payload, as it lies in the source's pack); 1: the block is damaged on
// the source, 2: another error; the payload is then the message and the
// response ends.

// BlockRef names one block of a backup.
type BlockRef struct {
	Disk  int   // index in the backup's disks
	Index int64 // block index in the disk
	Hash  blockstore.Hash
}

const blockRefSize = 2 + 8 + blockstore.HashSize

// Block statuses in a batch response.
const (
	BlockOK        = 0
	BlockDamaged   = 1
	BlockFailed    = 2
	maxBlockErrLen = 4096
)

// EncodeBlockRequest encodes a batch request.
func EncodeBlockRequest(refs []BlockRef) []byte {
	out := make([]byte, 4, 4+len(refs)*blockRefSize)
	binary.BigEndian.PutUint32(out, uint32(len(refs)))
	for _, r := range refs {
		out = binary.BigEndian.AppendUint16(out, uint16(r.Disk))
		out = binary.BigEndian.AppendUint64(out, uint64(r.Index))
		out = append(out, r.Hash[:]...)
	}
	return out
}

// DecodeBlockRequest parses a batch request of at most MaxBatch blocks.
func DecodeBlockRequest(b []byte) ([]BlockRef, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("block request of %d bytes", len(b))
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < 1 || n > MaxBatch {
		return nil, fmt.Errorf("block request for %d blocks: want 1..%d", n, MaxBatch)
	}
	if len(b) != 4+n*blockRefSize {
		return nil, fmt.Errorf("block request of %d bytes for %d blocks, want %d", len(b), n, 4+n*blockRefSize)
	}
	refs := make([]BlockRef, n)
	p := b[4:]
	for i := range refs {
		refs[i].Disk = int(binary.BigEndian.Uint16(p))
		refs[i].Index = int64(binary.BigEndian.Uint64(p[2:]))
		copy(refs[i].Hash[:], p[10:])
		if refs[i].Index < 0 {
			return nil, fmt.Errorf("block request: block index %d", refs[i].Index)
		}
		p = p[blockRefSize:]
	}
	return refs, nil
}

// WriteBlock writes one entry of a batch response.
func WriteBlock(w io.Writer, status byte, payload []byte) error {
	var h [5]byte
	h[0] = status
	binary.BigEndian.PutUint32(h[1:], uint32(len(payload)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// RemoteBlockError is an error entry of a batch response: the source
// could not send a block.
type RemoteBlockError struct {
	Ref     BlockRef
	Damaged bool // the block is damaged on the source
	Message string
}

func (e *RemoteBlockError) Error() string {
	if e.Damaged {
		return fmt.Sprintf("block %s is damaged on the remote: %s", e.Ref.Hash, e.Message)
	}
	return fmt.Sprintf("the remote could not send block %s: %s", e.Ref.Hash, e.Message)
}

// ReadBlocks reads a batch response for refs, calling fn with each
// block's value (a fresh slice, fn's to keep) in order. maxValue bounds a
// value's length.
func ReadBlocks(r io.Reader, refs []BlockRef, maxValue int, fn func(i int, value []byte) error) error {
	br := bufio.NewReaderSize(r, 256<<10)
	for i, ref := range refs {
		var h [5]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("block batch after %d of %d blocks: %w", i, len(refs), err)
		}
		n := int(binary.BigEndian.Uint32(h[1:]))
		switch h[0] {
		case BlockOK:
			if n < 1 || n > maxValue {
				return badStream("block %s of %d bytes", ref.Hash, n)
			}
			v := make([]byte, n)
			if _, err := io.ReadFull(br, v); err != nil {
				return fmt.Errorf("block batch at block %d of %d: %w", i, len(refs), err)
			}
			if err := fn(i, v); err != nil {
				return err
			}
		case BlockDamaged, BlockFailed:
			if n > maxBlockErrLen {
				return badStream("error message of %d bytes", n)
			}
			msg := make([]byte, n)
			if _, err := io.ReadFull(br, msg); err != nil {
				return fmt.Errorf("block batch at block %d of %d: %w", i, len(refs), err)
			}
			return &RemoteBlockError{Ref: ref, Damaged: h[0] == BlockDamaged, Message: string(msg)}
		default:
			return badStream("block status %d", h[0])
		}
	}
	return nil
}

// BlockErrorMessage shortens an error for a batch response.
func BlockErrorMessage(err error) []byte {
	m := err.Error()
	if len(m) > maxBlockErrLen {
		m = m[:maxBlockErrLen]
	}
	return []byte(m)
}
