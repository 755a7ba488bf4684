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

	// Sequential read-ahead state.
	mu        sync.Mutex
	lastEnd   int64 // offset right after the previous read
	window    int64 // current read-ahead, in blocks
	aheadTo   int64 // blocks below this index were already scheduled
	prefetch  chan struct{}
	closeOnce sync.Once
	closedCh  chan struct{}
}

// MaxReadAhead is the largest sequential read-ahead window, in bytes.
const MaxReadAhead = 4 << 20

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

// ReadAtContext is ReadAt with a context for cancellation.
func (v *Volume) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read map %s at negative offset %d", v.info.ID, off)
	}
	if off >= v.info.Size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), v.info.Size-off)
	v.readAhead(off, want)
	var n int64
	for n < want {
		pos := off + n
		i := pos / v.bs
		b, err := v.Block(ctx, i)
		if err != nil {
			return int(n), err
		}
		n += int64(copy(p[n:want], b[pos-i*v.bs:]))
	}
	if want < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readAhead schedules background loads of the blocks after a sequential
// read, doubling the window up to MaxReadAhead while reads stay
// sequential. Random reads reset it.
func (v *Volume) readAhead(off, n int64) {
	v.mu.Lock()
	sequential := off == v.lastEnd && off != 0
	v.lastEnd = off + n
	if !sequential {
		v.window = 0
		v.mu.Unlock()
		return
	}
	maxBlocks := max(1, MaxReadAhead/v.bs)
	if v.window == 0 {
		v.window = max(1, (n+v.bs-1)/v.bs)
	} else {
		v.window = min(v.window*2, maxBlocks)
	}
	from := max((off+n+v.bs-1)/v.bs, v.aheadTo)
	to := min((off+n)/v.bs+v.window+1, v.info.Blocks())
	if from < to {
		v.aheadTo = to
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
