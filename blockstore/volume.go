package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Volume reads one committed map as a disk image. It implements
// io.ReaderAt and is safe for concurrent use. Reads are verified block by
// block; a damaged block fails the read with an error for which
// IsDataError is true, and no bytes of that block are returned.
type Volume struct {
	s    *Store
	info MapInfo
	bs   int64

	// segs remembers recently used map segments without a lock: block
	// i's hash is found here on almost every read.
	segs [volSegSlots]atomic.Pointer[volSeg]

	// rc, when set, keeps blocks read more than once in a local file.
	rc *ReadCache

	// Sequential read-ahead, per stream: several readers (NBD
	// connections, a guest's parallel I/O) read one volume at once, and
	// one reader's random reads must not reset another's stream.
	mu        sync.Mutex
	streams   [maxStreams]stream
	tick      uint64
	prefetch  chan struct{}
	closeOnce sync.Once
	closedCh  chan struct{}
}

// MaxReadAhead is the largest sequential read-ahead window, in bytes.
const MaxReadAhead = 4 << 20

// maxStreams is how many sequential streams a volume tracks at once.
const maxStreams = 8

// volSegSlots is how many segments a volume remembers (direct-mapped).
const volSegSlots = 16

type volSeg struct {
	seg int64
	hs  []Hash // nil: an all-zero segment
}

// stream is one sequential reader's read-ahead state.
type stream struct {
	next    int64  // offset right after its furthest read
	window  int64  // current read-ahead, in blocks
	aheadTo int64  // blocks below this index were already scheduled
	used    uint64 // tick of its last read, for replacement
}

var _ io.ReaderAt = (*Volume)(nil)

// OpenVolume opens committed map id for reading. It costs one header read,
// whatever the disk size.
func (s *Store) OpenVolume(id MapID) (*Volume, error) {
	info, err := s.MapInfo(id)
	if err != nil {
		return nil, err
	}
	return &Volume{
		s: s, info: info, bs: int64(info.BlockSize),
		prefetch: make(chan struct{}, s.opts.Workers),
		closedCh: make(chan struct{}),
	}, nil
}

// EnableReadCache gives the volume a copy-on-read cache file of at most
// maxBytes in dir (see ReadCache). Call it before the first read.
func (v *Volume) EnableReadCache(dir string, maxBytes int64) error {
	if maxBytes < v.bs {
		return nil
	}
	select {
	case <-v.closedCh:
		return fmt.Errorf("map %s: read cache of a closed volume", v.info.ID)
	default:
	}
	if v.rc != nil {
		// A second file would replace the first, which nothing would
		// close: its space would stay taken.
		return fmt.Errorf("map %s: the volume has a read cache already", v.info.ID)
	}
	rc, err := newReadCache(dir, v.bs, v.info.Blocks(), maxBytes, func(need int64) error {
		return v.s.checkReserve(need, 2*v.s.opts.MinFree)
	})
	if err != nil {
		return fmt.Errorf("map %s: %w", v.info.ID, err)
	}
	v.rc = rc
	return nil
}

// ReadCacheStats returns the counters of the volume's read cache (zero
// without one).
func (v *Volume) ReadCacheStats() ReadCacheStats {
	if v.rc == nil {
		return ReadCacheStats{}
	}
	return v.rc.Stats()
}

// Size returns the disk size in bytes.
func (v *Volume) Size() int64 { return v.info.Size }

// Info returns the map header.
func (v *Volume) Info() MapInfo { return v.info }

// BlockSize returns the block size of the map.
func (v *Volume) BlockSize() int { return int(v.bs) }

// Close stops read-ahead and frees the read cache. Reads after Close
// still work, without either.
func (v *Volume) Close() error {
	var err error
	v.closeOnce.Do(func() {
		close(v.closedCh)
		if v.rc != nil {
			err = v.rc.close()
		}
	})
	return err
}

// BlockHash returns the hash of block i (zero for an all-zero block).
func (v *Volume) BlockHash(i int64) (Hash, error) {
	if i < 0 || i >= v.info.Blocks() {
		return Hash{}, fmt.Errorf("block %d outside map %s of %d blocks", i, v.info.ID, v.info.Blocks())
	}
	seg := i / SegmentEntries
	slot := &v.segs[seg%volSegSlots]
	vs := slot.Load()
	if vs == nil || vs.seg != seg {
		hs, err := v.s.segment(&v.info, seg)
		if err != nil {
			return Hash{}, err
		}
		vs = &volSeg{seg: seg, hs: hs}
		slot.Store(vs)
	}
	j := int(i % SegmentEntries)
	if j >= len(vs.hs) {
		return Hash{}, nil
	}
	return vs.hs[j], nil
}

// Block returns the verified bytes of block i (a full block, also for the
// last block of a disk whose size is not a multiple). The slice is shared:
// do not modify it.
func (v *Volume) Block(ctx context.Context, i int64) ([]byte, error) {
	h, err := v.BlockHash(i)
	if err != nil {
		return nil, err
	}
	b, loaded, err := v.s.readBlock(ctx, h)
	if err != nil {
		return nil, v.blockError(h, i, err)
	}
	if loaded && v.rc != nil {
		v.rc.loaded(i, b)
	}
	return b, nil
}

// BlockTo returns the verified bytes of block i like Block, but a block
// that is not cached is decoded into buf (cap(buf) ≥ the block size) and
// not added to the cache. Readers that stream a whole disk once
// (restores, hydration) use it: they allocate nothing per block and do
// not push the blocks other readers use out of the cache. The result is
// either buf or a shared cached slice; do not modify it.
func (v *Volume) BlockTo(ctx context.Context, i int64, buf []byte) ([]byte, error) {
	h, err := v.BlockHash(i)
	if err != nil {
		return nil, err
	}
	if b, ok := v.s.cachedBlock(h); ok {
		return b, nil
	}
	if cap(buf) < int(v.bs) {
		return nil, fmt.Errorf("map %s block %d: buffer of %d bytes for a %d-byte block", v.info.ID, i, cap(buf), v.bs)
	}
	release, err := v.s.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	b, err := v.s.loadBlock(ctx, h, buf)
	if err != nil {
		return nil, v.blockError(h, i, err)
	}
	return b, nil
}

// blockError names the map and block in a read error.
func (v *Volume) blockError(h Hash, i int64, err error) error {
	var c *CorruptBlockError
	var m *MissingBlockError
	switch {
	case errors.As(err, &c):
		return &CorruptBlockError{Hash: h, Map: v.info.ID, Block: i, Reason: c.Reason}
	case errors.As(err, &m):
		return &MissingBlockError{Hash: h, Map: v.info.ID, Block: i, Reason: m.Reason}
	}
	return fmt.Errorf("map %s block %d: %w", v.info.ID, i, err)
}

// ReadAt reads len(p) bytes at off. At the end of the disk it returns the
// bytes up to the end and io.EOF.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	return v.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context for cancellation. Blocks come
// from the block cache, then the read cache file, then the store; the
// blocks of a request that must be loaded are loaded in parallel.
func (v *Volume) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read map %s at negative offset %d", v.info.ID, off)
	}
	if off >= v.info.Size {
		return 0, io.EOF
	}
	release, err := v.s.enter()
	if err != nil {
		return 0, err
	}
	release()
	want := min(int64(len(p)), v.info.Size-off)
	if want == 0 {
		return 0, nil // nothing to load (and no block to find damaged)
	}
	v.readAhead(off, want)
	first, last := off/v.bs, (off+want-1)/v.bs
	// part is the slice of p that block i covers, and where in the block
	// it starts.
	part := func(i int64) ([]byte, int64) {
		from := max(off, i*v.bs)
		to := min(off+want, (i+1)*v.bs)
		return p[from-off : to-off], from - i*v.bs
	}
	copyBlock := func(i int64, b []byte) {
		dst, in := part(i)
		copy(dst, b[in:])
	}
	var missing []int64
	for i := first; i <= last; i++ {
		h, err := v.BlockHash(i)
		if err != nil {
			return int(max(0, i*v.bs-off)), err
		}
		if b, ok := v.s.cachedBlock(h); ok {
			copyBlock(i, b)
			continue
		}
		if v.rc != nil {
			if dst, in := part(i); v.rc.read(i, dst, in) {
				continue
			}
		}
		missing = append(missing, i)
	}
	if err := v.loadParallel(ctx, missing, copyBlock); err != nil {
		var bad *blockReadError
		if errors.As(err, &bad) {
			return int(max(0, bad.i*v.bs-off)), bad.err
		}
		return 0, err
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// Prefetch loads the blocks of [off, off+n) into the block cache and,
// with a read cache, into its file at once (NBD_CMD_CACHE: the client
// says it will read them).
func (v *Volume) Prefetch(ctx context.Context, off, n int64) error {
	if off < 0 || n <= 0 || off >= v.info.Size {
		return nil
	}
	n = min(n, v.info.Size-off)
	var blocks []int64
	for i := off / v.bs; i <= (off+n-1)/v.bs; i++ {
		if v.rc != nil && v.rc.has(i) {
			continue
		}
		blocks = append(blocks, i)
	}
	err := v.loadParallel(ctx, blocks, func(i int64, b []byte) {
		if v.rc != nil {
			v.rc.put(i, b)
		}
	})
	var bad *blockReadError
	if errors.As(err, &bad) {
		return bad.err
	}
	return err
}

// blockReadError is the failure of one block of a request.
type blockReadError struct {
	i   int64
	err error
}

func (e *blockReadError) Error() string { return e.err.Error() }

// loadParallel loads blocks (ascending) with up to Workers goroutines
// and hands each to use. Their index entries are looked up first, in
// one transaction. On failure it returns the error of the lowest failed
// block: the caller reports the bytes before it as read.
func (v *Volume) loadParallel(ctx context.Context, blocks []int64, use func(i int64, b []byte)) error {
	if len(blocks) == 0 {
		return nil
	}
	if len(blocks) == 1 {
		b, err := v.Block(ctx, blocks[0])
		if err != nil {
			return &blockReadError{blocks[0], err}
		}
		use(blocks[0], b)
		return nil
	}
	hs := make([]Hash, len(blocks))
	for k, i := range blocks {
		h, err := v.BlockHash(i)
		if err != nil {
			return &blockReadError{i, err}
		}
		hs[k] = h
	}
	locs, lerrs := v.s.lookupMany(hs)
	var (
		mu    sync.Mutex
		first *blockReadError
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	work := func() {
		for {
			k := next.Add(1) - 1
			if k >= int64(len(blocks)) {
				return
			}
			i := blocks[k]
			b, loaded, err := v.s.readBlockAt(ctx, hs[k], locs[k], lerrs[k])
			if err != nil {
				mu.Lock()
				if first == nil || i < first.i {
					first = &blockReadError{i, v.blockError(hs[k], i, err)}
				}
				mu.Unlock()
				continue
			}
			if loaded && v.rc != nil {
				v.rc.loaded(i, b)
			}
			use(i, b)
		}
	}
	// The calling goroutine is one of the workers.
	for range min(len(blocks), v.s.opts.Workers) - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
	if first != nil {
		return first
	}
	return nil
}

// readAhead schedules background loads of the blocks after a sequential
// read, doubling its stream's window up to MaxReadAhead while the stream
// stays sequential. A read continues a stream when it starts near the
// stream's end (requests of one stream arrive somewhat out of order when
// a client keeps many in flight on several connections); one that
// continues no stream starts a new one in place of the least recently
// used. Read-ahead takes its memory from the store's budget and is
// skipped when the budget or the prefetch workers are busy.
func (v *Volume) readAhead(off, n int64) {
	v.mu.Lock()
	v.tick++
	var st *stream
	slack := max(4*n, 2*v.bs)
	for i := range v.streams {
		if s := &v.streams[i]; s.used != 0 && off != 0 && off >= s.next-slack && off <= s.next+slack {
			st = s
			break
		}
	}
	if st == nil {
		st = &v.streams[0]
		for i := range v.streams {
			if v.streams[i].used < st.used {
				st = &v.streams[i]
			}
		}
		*st = stream{next: off + n, used: v.tick}
		v.mu.Unlock()
		return
	}
	st.next, st.used = max(st.next, off+n), v.tick
	maxBlocks := max(1, MaxReadAhead/v.bs)
	if st.window == 0 {
		st.window = max(1, (n+v.bs-1)/v.bs)
	} else {
		st.window = min(st.window*2, maxBlocks)
	}
	from := max((st.next+v.bs-1)/v.bs, st.aheadTo)
	to := min(st.next/v.bs+st.window+1, v.info.Blocks())
	if from < to {
		st.aheadTo = to
	}
	v.mu.Unlock()
	var todo []int64
	var hs []Hash
	for i := from; i < to; i++ {
		h, err := v.BlockHash(i)
		if err != nil || h.IsZero() {
			continue
		}
		if _, ok := v.s.cachedBlock(h); ok {
			continue
		}
		todo, hs = append(todo, i), append(hs, h)
	}
	// As many loaders as prefetch slots and budget allow now; the reader
	// fetches what they do not get to itself.
	k := 0
slots:
	for k < len(todo) {
		select {
		case v.prefetch <- struct{}{}:
		default:
			break slots
		}
		if !v.s.budget.TryAcquire(v.bs) {
			<-v.prefetch
			break
		}
		k++
	}
	if k == 0 {
		return
	}
	giveBack := func() {
		v.s.budget.Release(int64(k) * v.bs)
		for range k {
			<-v.prefetch
		}
	}
	ok := v.s.background(func(ctx context.Context) {
		defer giveBack()
		locs, lerrs := v.s.lookupMany(hs)
		var next atomic.Int64
		var wg sync.WaitGroup
		load := func() {
			defer wg.Done()
			for {
				j := next.Add(1) - 1
				if j >= int64(len(todo)) || ctx.Err() != nil {
					return
				}
				select {
				case <-v.closedCh:
					return
				default:
				}
				// Errors surface on the real read.
				if b, loaded, err := v.s.readBlockAt(ctx, hs[j], locs[j], lerrs[j]); err == nil && loaded && v.rc != nil {
					v.rc.loaded(todo[j], b)
				}
			}
		}
		wg.Add(k)
		for range k - 1 {
			go load()
		}
		load()
		wg.Wait()
	})
	if !ok {
		giveBack()
	}
}

// ReadCached fills p with the bytes at off if the block cache or the
// read cache file holds every block they touch, without loading
// anything, and reports whether it did (false: p holds garbage, read it
// with ReadAt). A read past the end is never cached.
func (v *Volume) ReadCached(p []byte, off int64) bool {
	if off < 0 || int64(len(p)) == 0 || off+int64(len(p)) > v.info.Size {
		return false
	}
	end := off + int64(len(p))
	for i := off / v.bs; i <= (end-1)/v.bs; i++ {
		from, to := max(off, i*v.bs), min(end, (i+1)*v.bs)
		h, err := v.BlockHash(i)
		if err != nil {
			return false
		}
		if b, ok := v.s.cachedBlock(h); ok {
			copy(p[from-off:to-off], b[from-i*v.bs:])
			continue
		}
		if v.rc == nil || !v.rc.read(i, p[from-off:to-off], from-i*v.bs) {
			return false
		}
	}
	return true
}
