package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Volume reads one committed map as a disk image. It implements
// io.ReaderAt and is safe for concurrent use. Reads are verified block by
// block; a damaged block fails the read with an error for which
// IsDataError is true, and no bytes of that block are returned.
type Volume struct {
	s    *Store
	info MapInfo
	bs   int64

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

// stream is one sequential reader's read-ahead state.
type stream struct {
	next    int64  // offset right after its last read
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

// Size returns the disk size in bytes.
func (v *Volume) Size() int64 { return v.info.Size }

// Info returns the map header.
func (v *Volume) Info() MapInfo { return v.info }

// BlockSize returns the block size of the map.
func (v *Volume) BlockSize() int { return int(v.bs) }

// Close stops read-ahead. Reads after Close still work, without it.
func (v *Volume) Close() error {
	v.closeOnce.Do(func() { close(v.closedCh) })
	return nil
}

// BlockHash returns the hash of block i (zero for an all-zero block).
func (v *Volume) BlockHash(i int64) (Hash, error) {
	if i < 0 || i >= v.info.Blocks() {
		return Hash{}, fmt.Errorf("block %d outside map %s of %d blocks", i, v.info.ID, v.info.Blocks())
	}
	return v.info.blockHash(v.s, i)
}

// Block returns the verified bytes of block i (a full block, also for the
// last block of a disk whose size is not a multiple). The slice is shared:
// do not modify it.
func (v *Volume) Block(ctx context.Context, i int64) ([]byte, error) {
	h, err := v.BlockHash(i)
	if err != nil {
		return nil, err
	}
	b, err := v.s.ReadBlock(ctx, h)
	if err != nil {
		var c *CorruptBlockError
		var m *MissingBlockError
		switch {
		case errors.As(err, &c):
			return nil, &CorruptBlockError{Hash: h, Map: v.info.ID, Block: i, Reason: c.Reason}
		case errors.As(err, &m):
			return nil, &MissingBlockError{Hash: h, Map: v.info.ID, Block: i}
		}
		return nil, fmt.Errorf("map %s block %d: %w", v.info.ID, i, err)
	}
	return b, nil
}

// ReadAt reads len(p) bytes at off. At the end of the disk it returns the
// bytes up to the end and io.EOF.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	return v.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context for cancellation. The blocks of
// a request that are not cached are loaded in parallel.
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
	v.readAhead(off, want)
	first, last := off/v.bs, (off+want-1)/v.bs
	// copyBlock copies the part of block i that the request covers.
	copyBlock := func(i int64, b []byte) {
		from := max(off, i*v.bs)
		to := min(off+want, (i+1)*v.bs)
		copy(p[from-off:to-off], b[from-i*v.bs:to-i*v.bs])
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

// blockReadError is the failure of one block of a request.
type blockReadError struct {
	i   int64
	err error
}

func (e *blockReadError) Error() string { return e.err.Error() }

// loadParallel loads blocks (ascending) with up to Workers goroutines
// and hands each to use. On failure it returns the error of the lowest
// failed block: the caller reports the bytes before it as read.
func (v *Volume) loadParallel(ctx context.Context, blocks []int64, use func(i int64, b []byte)) error {
	if len(blocks) == 1 {
		b, err := v.Block(ctx, blocks[0])
		if err != nil {
			return &blockReadError{blocks[0], err}
		}
		use(blocks[0], b)
		return nil
	}
	var (
		mu    sync.Mutex
		first *blockReadError
		next  int
		wg    sync.WaitGroup
	)
	for range min(len(blocks), v.s.opts.Workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(blocks) {
					mu.Unlock()
					return
				}
				i := blocks[next]
				next++
				mu.Unlock()
				b, err := v.Block(ctx, i)
				if err != nil {
					mu.Lock()
					if first == nil || i < first.i {
						first = &blockReadError{i, err}
					}
					mu.Unlock()
					continue
				}
				use(i, b)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return nil
}

// readAhead schedules background loads of the blocks after a sequential
// read, doubling its stream's window up to MaxReadAhead while the stream
// stays sequential. A read that continues no stream starts a new one in
// place of the least recently used.
func (v *Volume) readAhead(off, n int64) {
	v.mu.Lock()
	v.tick++
	var st *stream
	for i := range v.streams {
		if s := &v.streams[i]; s.used != 0 && s.next == off && off != 0 {
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
	st.next, st.used = off+n, v.tick
	maxBlocks := max(1, MaxReadAhead/v.bs)
	if st.window == 0 {
		st.window = max(1, (n+v.bs-1)/v.bs)
	} else {
		st.window = min(st.window*2, maxBlocks)
	}
	from := max((off+n+v.bs-1)/v.bs, st.aheadTo)
	to := min((off+n)/v.bs+st.window+1, v.info.Blocks())
	if from < to {
		st.aheadTo = to
	}
	v.mu.Unlock()
	for i := from; i < to; i++ {
		select {
		case v.prefetch <- struct{}{}:
		default:
			return // prefetchers busy: the reader will fetch what it needs itself
		}
		started := v.s.background(func(ctx context.Context) {
			defer func() { <-v.prefetch }()
			select {
			case <-v.closedCh:
			case <-ctx.Done():
			default:
				_, _ = v.Block(ctx, i) // errors surface on the real read
			}
		})
		if !started {
			<-v.prefetch
			return
		}
	}
}
