package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Source is a disk to back up: Size bytes readable with ReadAt. ReadAt may
// be called from several goroutines at once.
type Source interface {
	io.ReaderAt
	Size() int64
}

// SparseSource is a Source that knows where its data is. Bytes outside the
// extents it reports read as zeros and are not read at all.
type SparseSource interface {
	Source
	// NextData returns the first data extent [start, end) that ends after
	// off, or io.EOF when the rest of the source is a hole.
	NextData(ctx context.Context, off int64) (start, end int64, err error)
}

// ChangedSource is a Source that knows which of its bytes changed since
// the backup whose map is given as IngestOptions.Parent (changed-block
// tracking: a QEMU dirty bitmap). Blocks outside the extents it reports
// are taken from the parent's map without being read.
type ChangedSource interface {
	Source
	// NextChanged returns the first changed extent [start, end) that ends
	// after off, or io.EOF when nothing after off changed.
	NextChanged(ctx context.Context, off int64) (start, end int64, err error)
}

// IngestOptions tune one Ingest.
type IngestOptions struct {
	// Progress, if set, is called from one goroutine with the bytes of the
	// disk processed so far and the disk size.
	Progress func(done, total int64)
	// Parent is the committed map the source's changes are relative to.
	// With a ChangedSource, every block outside its changed extents is
	// taken from Parent (same position, same length); a parent block the
	// store no longer holds is read from the source after all. Ignored
	// for other sources. The caller keeps Parent from being deleted while
	// the ingest runs.
	Parent *MapInfo
}

// IngestStats describe what one ingest read and wrote.
type IngestStats struct {
	LogicalBytes int64 `json:"logical_bytes"` // disk size
	ReadBytes    int64 `json:"read_bytes"`    // bytes read from the source (holes are not read)
	ZeroBlocks   int64 `json:"zero_blocks"`   // blocks that are all zero, stored as markers
	DataBlocks   int64 `json:"data_blocks"`   // blocks with data
	NewBlocks    int64 `json:"new_blocks"`    // blocks not in the store before
	NewRawBytes  int64 `json:"new_raw_bytes"` // their size before compression
	NewBytes     int64 `json:"new_bytes"`     // their stored size (after compression)
	// ParentBlocks were taken from the parent map without reading
	// (changed-block tracking); ParentMissing of those were no longer in
	// the store and were read after all.
	ParentBlocks  int64 `json:"parent_blocks,omitempty"`
	ParentMissing int64 `json:"parent_blocks_missing,omitempty"`
	DurationNano  int64 `json:"duration_nanos"` // wall time of the ingest
}

// PendingMap is an ingested map that is not yet visible. Commit it with
// Store.Commit or drop it with Abort.
type PendingMap struct {
	Info      MapInfo
	s         *Store
	damageSeq uint64 // scrub's damage log position when the ingest began
}

// Abort removes the map's file. Its new blocks are left for GC.
func (p *PendingMap) Abort(ctx context.Context) error {
	p.s.mu.Lock()
	delete(p.s.pending, p.Info.ID)
	delete(p.s.finished, p.Info.ID)
	p.s.mu.Unlock()
	p.s.removeMapFile(p.Info.ID)
	return ctx.Err()
}

// ingestItem is one unit of pipeline work: up to itemBytes of consecutive
// blocks.
type ingestItem struct {
	seq    int64
	first  int64  // index of the first block
	n      int    // number of blocks
	start  int64  // disk offset of the first block
	end    int64  // disk offset after the last block (the disk's end at most)
	buf    []byte // n*blockSize bytes, filled by a worker; blocks not in data are not read
	data   []bool // block j overlaps a data extent
	parent []Hash // non-nil: block j is unchanged, with this hash in the parent (zero: a zero block)
	fromP  []bool // block j comes from the parent
	hashes []Hash
	newVal [][]byte // stored value of block j when it was not in the store
	err    error
}

const itemBytes = 1 << 20

// Ingest reads src and writes its new blocks into packs and its block map
// into a map file under a new map id that nothing refers to yet. It
// returns a PendingMap to Commit.
//
// Pipeline: one planner (sparse-aware: which blocks hold data, which come
// from the parent) → Workers goroutines that read, zero-check, hash,
// look up and compress → one collector that appends new blocks to
// the ingest's own pack in disk order and writes map segments. A pack is
// indexed once it is sealed and synced, so a lookup never finds a block
// whose bytes could still be lost.
//
// Memory bound: at most 2×Workers+2 items of 1 MiB are in flight, each with
// its read buffer and the compressed copies of its new blocks, so about
// (2×Workers+2)×2 MiB (12 MiB with two workers), plus one segment of hashes
// and the pack writer's 1 MiB buffer.
func (s *Store) Ingest(ctx context.Context, src Source, opt IngestOptions) (*PendingMap, error) {
	start := time.Now()
	id := NewMapID()
	if err := s.checkSpace(0); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if p := opt.Parent; p != nil && p.BlockSize != s.blockSize {
		return nil, fmt.Errorf("ingest: parent map %s has %d-byte blocks, the store %d", p.ID, p.BlockSize, s.blockSize)
	}
	// The map file is created and registered as pending in one critical
	// section: GC's orphan check must never see the file unregistered.
	s.mu.Lock()
	mw, err := s.createMap(id, src.Size())
	if err == nil {
		s.pending[id] = mw
	}
	damageSeq := s.damage.seq
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	// A parent that lost no block since its commit needs no lookups for
	// the blocks taken from it (a removal after this point is in the
	// damage log, which Commit checks).
	parentIntact := false
	if opt.Parent != nil {
		n, err := s.removals()
		if err != nil {
			s.mu.Lock()
			delete(s.pending, id)
			s.mu.Unlock()
			mw.abort()
			return nil, fmt.Errorf("ingest: %w", err)
		}
		parentIntact = n == opt.Parent.Removals
	}

	ig := &ingest{
		s:      s,
		id:     id,
		src:    src,
		opt:    opt,
		size:   src.Size(),
		bs:     int64(s.blockSize),
		ref:    s.gate.register(),
		mw:     mw,
		recent: map[Hash]struct{}{},

		parentIntact: parentIntact,
	}
	defer s.gate.unregister(ig.ref)
	stats, err := ig.run(ctx)
	if err != nil {
		if ig.pw != nil {
			ig.pw.release()
		}
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
		mw.abort()
		return nil, err
	}
	stats.DurationNano = time.Since(start).Nanoseconds()
	s.hook(HookIngestDone)
	return &PendingMap{s: s, damageSeq: damageSeq, Info: MapInfo{
		ID: id, Size: ig.size, BlockSize: s.blockSize, Created: time.Now().UTC(), Stats: stats,
		Segments: mw.present,
	}}, nil
}

type ingest struct {
	s    *Store
	id   MapID
	src  Source
	opt  IngestOptions
	size int64
	bs   int64
	ref  *ingestRef
	mw   *mapWriter

	// collector state
	pw  *packWriter // pack being filled; nil until a new block arrives
	pub *publisher  // seals and indexes full packs in the background

	parentIntact bool // every block of opt.Parent is in the store
	seg          []Hash
	segIndex     int64
	segHeld      []Hash // hashes of seg registered in ref, released once the segment is in the map file
	recent       map[Hash]struct{}
	stats        IngestStats

	readBytes     atomic.Int64
	parentBlocks  atomic.Int64
	parentMissing atomic.Int64
}

func (ig *ingest) run(ctx context.Context) (IngestStats, error) {
	ig.stats.LogicalBytes = ig.size
	nblocks := blocksFor(ig.size, int(ig.bs))
	perItem := max(1, int(itemBytes/ig.bs))
	workers := ig.s.opts.Workers
	inflight := 2*workers + 2

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	tokens := make(chan struct{}, inflight)
	work := make(chan *ingestItem, workers)
	results := make(chan *ingestItem, inflight)

	go func() {
		defer close(work)
		if err := ig.read(ctx, nblocks, perItem, tokens, work); err != nil {
			cancel(err)
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scratch := make([]byte, 0, ig.bs+ig.bs/8)
			for it := range work {
				scratch = ig.process(ctx, it, scratch)
				results <- it
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	ig.pub = ig.s.newPublisher(ctx)
	defer ig.pub.abandon() // after a failure: drop what is queued
	err := ig.collect(ctx, results, tokens)
	if err != nil {
		cancel(err)
		for range results { // let the workers finish
		}
	}
	if ctx.Err() != nil {
		// The reader's or the caller's reason beats the collector's "canceled".
		err = context.Cause(ctx)
	}
	if err != nil {
		return IngestStats{}, fmt.Errorf("ingest: %w", err)
	}
	ig.stats.ReadBytes = ig.readBytes.Load()
	ig.stats.ParentBlocks = ig.parentBlocks.Load()
	ig.stats.ParentMissing = ig.parentMissing.Load()
	return ig.stats, nil
}

// extentCursor walks the extents a source reports (data, or changed)
// in disk order.
type extentCursor struct {
	next       func(ctx context.Context, off int64) (int64, int64, error)
	start, end int64
	have, done bool
}

// overlaps reports whether [bStart, bEnd) overlaps an extent; calls must
// come in disk order.
func (c *extentCursor) overlaps(ctx context.Context, bStart, bEnd int64) (bool, error) {
	for !c.done && (!c.have || c.end <= bStart) {
		s, e, err := c.next(ctx, bStart)
		if errors.Is(err, io.EOF) {
			c.done = true
			break
		}
		if err != nil {
			return false, err
		}
		if e <= s || e <= bStart {
			return false, fmt.Errorf("source reported extent [%d, %d) for offset %d", s, e, bStart)
		}
		c.start, c.end, c.have = s, e, true
	}
	return !c.done && c.start < bEnd && c.end > bStart, nil
}

// read produces items in disk order, skipping holes of sparse sources
// and, with a parent, the blocks that did not change.
func (ig *ingest) read(ctx context.Context, nblocks int64, perItem int, tokens chan struct{}, work chan<- *ingestItem) error {
	var data, changed *extentCursor
	if sparse, ok := ig.src.(SparseSource); ok {
		data = &extentCursor{next: sparse.NextData}
	}
	parent := ig.opt.Parent
	if cs, ok := ig.src.(ChangedSource); ok && parent != nil {
		changed = &extentCursor{next: cs.NextChanged}
	}
	var seq int64
	for first := int64(0); first < nblocks; first += int64(perItem) {
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		n := int(min(int64(perItem), nblocks-first))
		it := &ingestItem{seq: seq, first: first, n: n, data: make([]bool, n)}
		seq++
		itemStart, itemEnd := first*ig.bs, min((first+int64(n))*ig.bs, ig.size)
		for j := 0; j < n; j++ {
			i := first + int64(j)
			bStart, bEnd := i*ig.bs, min((i+1)*ig.bs, ig.size)
			inData := true
			if data != nil {
				var err error
				if inData, err = data.overlaps(ctx, bStart, bEnd); err != nil {
					return fmt.Errorf("find data in source at offset %d: %w", bStart, err)
				}
			}
			it.data[j] = inData
			if changed == nil || bEnd != min((i+1)*ig.bs, parent.Size) {
				continue // no parent, or the block is not the same extent in the parent
			}
			isChanged, err := changed.overlaps(ctx, bStart, bEnd)
			if err != nil {
				return fmt.Errorf("find changed blocks in source at offset %d: %w", bStart, err)
			}
			if isChanged {
				continue
			}
			h, err := parent.blockHash(ig.s, i)
			if err != nil {
				return fmt.Errorf("parent map %s block %d: %w", parent.ID, i, err)
			}
			if it.parent == nil {
				it.parent, it.fromP = make([]Hash, n), make([]bool, n)
			}
			it.parent[j], it.fromP[j], it.data[j] = h, true, false
		}
		it.start, it.end = itemStart, itemEnd
		select {
		case work <- it:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// fill reads the item's runs of data blocks from the source, one ReadAt
// per run. Workers call it, so that reads of several items are in flight
// at once: a source that is fast only with parallel reads (an NVMe disk,
// an NBD server, the page cache on many cores) does not bound the
// backup at one reader's speed.
func (ig *ingest) fill(it *ingestItem) error {
	for j := 0; j < it.n; {
		if !it.data[j] {
			j++
			continue
		}
		k := j
		for k < it.n && it.data[k] {
			k++
		}
		if it.buf == nil {
			it.buf = make([]byte, int64(it.n)*ig.bs)
		}
		off := it.start + int64(j)*ig.bs
		end := min(it.start+int64(k)*ig.bs, it.end)
		if err := readFull(ig.src, it.buf[off-it.start:end-it.start], off); err != nil {
			return err
		}
		ig.readBytes.Add(end - off)
		j = k
	}
	return nil
}

// process reads, hashes, checks and compresses the blocks of one item.
func (ig *ingest) process(ctx context.Context, it *ingestItem, scratch []byte) []byte {
	it.hashes = make([]Hash, it.n)
	it.newVal = make([][]byte, it.n)
	if ctx.Err() != nil {
		it.err = ctx.Err()
		return scratch
	}
	if err := ig.fill(it); err != nil {
		it.err = err
		return scratch
	}
	for j := 0; j < it.n; j++ {
		var b []byte
		switch {
		case it.fromP != nil && it.fromP[j]:
			h := it.parent[j]
			if h.IsZero() {
				continue
			}
			// Held before the lookup, as any hash this ingest refers to.
			ig.ref.hold(h)
			ok := ig.parentIntact
			if !ok {
				var err error
				if ok, err = ig.s.HasBlock(h); err != nil {
					it.err = err
					return scratch
				}
			}
			ig.s.hook(HookIngestLookup)
			if ok {
				it.hashes[j] = h
				ig.parentBlocks.Add(1)
				continue
			}
			// The parent's block is gone (scrub found it damaged): read it.
			ig.ref.release([]Hash{h})
			ig.parentMissing.Add(1)
			var err error
			if b, err = ig.readBlock(it.first + int64(j)); err != nil {
				it.err = err
				return scratch
			}
		case it.data[j]:
			b = it.buf[int64(j)*ig.bs : int64(j+1)*ig.bs]
		default:
			continue
		}
		if IsZeroBlock(b) {
			continue
		}
		h := HashBlock(b)
		it.hashes[j] = h
		// Register before the lookup: from here GC will not sweep h.
		ig.ref.hold(h)
		ok, err := ig.s.HasBlock(h)
		if err != nil {
			it.err = err
			return scratch
		}
		ig.s.hook(HookIngestLookup)
		if ok {
			continue
		}
		var v []byte
		v, scratch = ig.s.codecs.encode(ig.s.opts.Codec, b, scratch)
		it.newVal[j] = append([]byte(nil), v...)
	}
	it.buf = nil
	return scratch
}

// readBlock reads block i from the source (a worker's fallback when a
// parent block is missing), zero-padded to a full block.
func (ig *ingest) readBlock(i int64) ([]byte, error) {
	b := make([]byte, ig.bs)
	off := i * ig.bs
	end := min(off+ig.bs, ig.size)
	if err := readFull(ig.src, b[:end-off], off); err != nil {
		return nil, err
	}
	ig.readBytes.Add(end - off)
	return b, nil
}

// collect consumes results in disk order and writes them.
func (ig *ingest) collect(ctx context.Context, results <-chan *ingestItem, tokens <-chan struct{}) error {
	waiting := map[int64]*ingestItem{}
	var next int64
	for it := range results {
		waiting[it.seq] = it
		for {
			cur, ok := waiting[next]
			if !ok {
				break
			}
			delete(waiting, next)
			next++
			if cur.err != nil {
				return cur.err
			}
			if err := ig.write(ctx, cur); err != nil {
				return err
			}
			<-tokens
			if ig.opt.Progress != nil {
				ig.opt.Progress(min((cur.first+int64(cur.n))*ig.bs, ig.size), ig.size)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(waiting) > 0 {
		return fmt.Errorf("pipeline ended with %d items out of order", len(waiting))
	}
	if err := ig.flushSegment(); err != nil {
		return err
	}
	if ig.pw != nil {
		pw := ig.pw
		ig.pw = nil
		if err := ig.pub.submit(pw); err != nil {
			return fmt.Errorf("map %s: %w", ig.id, err)
		}
	}
	if err := ig.pub.wait(); err != nil {
		return fmt.Errorf("map %s: %w", ig.id, err)
	}
	if err := ig.mw.finish(); err != nil {
		return err
	}
	return nil
}

const recentLimit = 1 << 15

func (ig *ingest) write(ctx context.Context, it *ingestItem) error {
	for j := 0; j < it.n; j++ {
		h := it.hashes[j]
		if h.IsZero() {
			ig.stats.ZeroBlocks++
		} else {
			ig.stats.DataBlocks++
			ig.segHeld = append(ig.segHeld, h)
		}
		if v := it.newVal[j]; v != nil {
			// Two workers may both find a block missing; write it once.
			if _, dup := ig.recent[h]; !dup {
				if len(ig.recent) >= recentLimit {
					clear(ig.recent)
				}
				ig.recent[h] = struct{}{}
				if err := ig.addBlock(ctx, h, v); err != nil {
					return err
				}
				ig.stats.NewBlocks++
				ig.stats.NewRawBytes += ig.bs
				ig.stats.NewBytes += int64(len(v))
			}
		}
		ig.seg = append(ig.seg, h)
		if len(ig.seg) == SegmentEntries {
			if err := ig.flushSegment(); err != nil {
				return err
			}
		}
	}
	return nil
}

// addBlock appends a new block to the ingest's pack, sealing and indexing
// the pack when it is full.
func (ig *ingest) addBlock(ctx context.Context, h Hash, v []byte) error {
	if ig.pw == nil {
		pw, err := ig.s.newPackWriter()
		if err != nil {
			return fmt.Errorf("map %s: %w", ig.id, err)
		}
		ig.pw = pw
	}
	if _, err := ig.pw.add(h, v); err != nil {
		return fmt.Errorf("map %s: %w", ig.id, err)
	}
	if ig.pw.full() {
		pw := ig.pw
		ig.pw = nil
		if err := ig.pub.submit(pw); err != nil {
			return fmt.Errorf("map %s: %w", ig.id, err)
		}
	}
	return nil
}

// flushSegment writes the current segment to the map file (unless all
// zero), and only then lets GC forget the hashes it refers to: from now
// on a GC reads them from the file.
func (ig *ingest) flushSegment() error {
	if len(ig.seg) == 0 {
		return nil
	}
	// At most one segment of new data (64 MiB at 64 KiB blocks) is written
	// between two checks; the reserve covers it.
	if err := ig.s.checkSpace(0); err != nil {
		return err
	}
	if err := ig.mw.writeSegment(ig.segIndex, ig.seg); err != nil {
		return err
	}
	ig.s.hook(HookIngestSegmentWritten)
	ig.ref.release(ig.segHeld)
	ig.segHeld = ig.segHeld[:0]
	ig.seg = ig.seg[:0]
	ig.segIndex++
	return nil
}

// readFull reads len(p) bytes of src at off. io.EOF is fine only with
// every byte read (io.ReaderAt may say EOF with the last bytes of the
// source): a short read is an error, never a block padded with zeroes.
func readFull(src Source, p []byte, off int64) error {
	n, err := src.ReadAt(p, off)
	if err == nil || errors.Is(err, io.EOF) && n == len(p) {
		return nil
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read source at offset %d (%d of %d bytes): %w", off, n, len(p), err)
}
