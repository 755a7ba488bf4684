package s3packs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"csbs/blockstore"
)

// errPastEnd means a read started at or after the end of a pack.
var errPastEnd = errors.New("read past the end of the pack")

// fetchFunc reads chunk ch of pack num from the bucket: its bytes (fewer
// than a chunk at the end of the pack) and the pack's size.
type fetchFunc func(ctx context.Context, num uint64, ch int64) (data []byte, size int64, err error)

// cache keeps packs and chunks of packs on local disk, bounded in bytes,
// evicting whole packs least recently used first. A pack written by Put
// is a complete file <num>.pack (it survives a restart); chunks fetched
// on a miss go into a sparse <num>.part at their offsets, with the
// present chunks known only in memory (a restart deletes .part files: a
// chunk half-written at a crash must never be read).
//
// Lock order: mu only. Files are created, opened and removed under mu,
// and read and written outside it; a chunk's bit is set only after its
// bytes are written, and only if its entry is still the same (not
// evicted meanwhile), so a reader that sees a bit reads whole data.
type cache struct {
	dir     string
	limit   int64
	chunk   int64
	ahead   int // chunks fetched ahead of a sequential reader
	fetch   fetchFunc
	log     *slog.Logger
	bg      context.Context // prefetches; canceled by close
	stopBg  context.CancelFunc
	bgWG    sync.WaitGroup
	prefMax int32

	mu      sync.Mutex
	packs   map[uint64]*centry
	lru     *list.List // of *centry, front = most recent
	bytes   int64
	fills   map[chunkKey]*fill
	streams map[uint64]int64 // pack → last chunk read, for read-ahead

	prefetching           atomic.Int32
	hits, misses, fetches atomic.Int64
}

type chunkKey struct {
	num uint64
	ch  int64
}

type centry struct {
	num     uint64
	whole   bool  // the file is the complete pack
	size    int64 // pack size, -1 until a GET told it
	present map[int64]bool
	bytes   int64
	elem    *list.Element
}

type fill struct {
	done chan struct{}
	data []byte
	size int64
	err  error
}

// newCache opens the cache in dir, keeping complete packs from before and
// deleting everything else.
func newCache(dir string, limit, chunk int64, ahead int, fetch fetchFunc, log *slog.Logger) (*cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pack cache %s: %w", dir, err)
	}
	c := &cache{
		dir: dir, limit: limit, chunk: chunk, ahead: ahead, fetch: fetch, log: log, prefMax: 16,
		packs: map[uint64]*centry{}, lru: list.New(), fills: map[chunkKey]*fill{}, streams: map[uint64]int64{},
	}
	c.bg, c.stopBg = context.WithCancel(context.Background())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("pack cache %s: %w", dir, err)
	}
	type kept struct {
		num  uint64
		size int64
		mod  int64
	}
	var ks []kept
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".pack")
		num, perr := strconv.ParseUint(name, 16, 64)
		fi, ierr := e.Info()
		if !ok || perr != nil || ierr != nil || !fi.Mode().IsRegular() {
			os.RemoveAll(filepath.Join(dir, e.Name()))
			continue
		}
		ks = append(ks, kept{num, fi.Size(), fi.ModTime().UnixNano()})
	}
	slices.SortFunc(ks, func(a, b kept) int { return int(a.mod - b.mod) })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range ks { // oldest first, so the newest ends at the front
		e := &centry{num: k.num, whole: true, size: k.size, bytes: k.size}
		e.elem = c.lru.PushFront(e)
		c.packs[k.num] = e
		c.bytes += k.size
	}
	c.evictLocked()
	return c, nil
}

func (c *cache) path(e *centry) string {
	if e.whole {
		return filepath.Join(c.dir, fmt.Sprintf("%016x.pack", e.num))
	}
	return filepath.Join(c.dir, fmt.Sprintf("%016x.part", e.num))
}

// coveredLocked reports whether chunks first..last of e are all on disk.
func (c *cache) coveredLocked(e *centry, first, last int64) bool {
	if e.whole {
		return true
	}
	if e.size >= 0 {
		last = min(last, (e.size-1)/c.chunk)
	}
	for ch := first; ch <= last; ch++ {
		if !e.present[ch] {
			return false
		}
	}
	return true
}

// readAt reads pack bytes through the cache.
func (c *cache) readAt(ctx context.Context, num uint64, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	first, last := off/c.chunk, (off+int64(len(p))-1)/c.chunk
	c.mu.Lock()
	e := c.packs[num]
	if e != nil && e.size >= 0 && off >= e.size {
		c.mu.Unlock()
		return 0, io.EOF
	}
	if e != nil && c.coveredLocked(e, first, last) {
		c.lru.MoveToFront(e.elem)
		f, err := os.Open(c.path(e))
		size := e.size
		c.mu.Unlock()
		if err == nil {
			c.hits.Add(1)
			want := p
			if size >= 0 && off+int64(len(p)) > size {
				want = p[:size-off]
			}
			n, rerr := f.ReadAt(want, off)
			f.Close()
			if rerr == nil || (errors.Is(rerr, io.EOF) && n == len(want)) {
				c.readAhead(ctx, num, first, last)
				if n < len(p) {
					return n, io.EOF
				}
				return n, nil
			}
			c.log.Warn("pack cache: read failed; reading the bucket", "pack", fmt.Sprintf("%016x", num), "err", rerr)
		}
	} else {
		c.mu.Unlock()
	}
	c.misses.Add(1)
	n := 0
	for ch := first; ch <= last; ch++ {
		data, err := c.chunkData(ctx, num, ch)
		if errors.Is(err, errPastEnd) {
			return n, io.EOF
		}
		if err != nil {
			return n, err
		}
		cs := ch * c.chunk
		lo, hi := max(off, cs), min(off+int64(len(p)), cs+c.chunk)
		if lo-cs >= int64(len(data)) {
			return n, io.EOF
		}
		k := copy(p[lo-off:hi-off], data[lo-cs:])
		n += k
		if int64(k) < hi-lo {
			return n, io.EOF
		}
	}
	c.readAhead(ctx, num, first, last)
	return n, nil
}

// chunkData returns the bytes of one chunk: from disk when present, else
// from a fetch (one per chunk however many readers miss it at once).
func (c *cache) chunkData(ctx context.Context, num uint64, ch int64) ([]byte, error) {
	c.mu.Lock()
	if e := c.packs[num]; e != nil && c.coveredLocked(e, ch, ch) {
		f, err := os.Open(c.path(e))
		size := e.size
		c.mu.Unlock()
		if err == nil {
			n := c.chunk
			if size >= 0 {
				n = min(n, size-ch*c.chunk)
			}
			if n <= 0 {
				f.Close()
				return nil, errPastEnd
			}
			buf := make([]byte, n)
			_, rerr := f.ReadAt(buf, ch*c.chunk)
			f.Close()
			if rerr == nil {
				return buf, nil
			}
		}
	} else {
		c.mu.Unlock()
	}
	for range 2 {
		fl := c.startFill(ctx, num, ch)
		select {
		case <-fl.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// A fill started by a reader that gave up carries its context's
		// error; this reader's own context is alive, so it fetches again.
		if errors.Is(fl.err, context.Canceled) || errors.Is(fl.err, context.DeadlineExceeded) {
			continue
		}
		return fl.data, fl.err
	}
	return nil, fmt.Errorf("pack %016x chunk %d: fetch canceled twice", num, ch)
}

// startFill joins the fetch of a chunk in flight or starts one, in its own
// goroutine, under ctx's values (the job's IOCounter).
func (c *cache) startFill(ctx context.Context, num uint64, ch int64) *fill {
	k := chunkKey{num, ch}
	c.mu.Lock()
	if fl, ok := c.fills[k]; ok {
		c.mu.Unlock()
		return fl
	}
	fl := &fill{done: make(chan struct{})}
	c.fills[k] = fl
	c.mu.Unlock()
	c.fetches.Add(1)
	go func() {
		fl.data, fl.size, fl.err = c.fetch(ctx, num, ch)
		if fl.err == nil {
			c.store(num, ch, fl.data, fl.size)
		}
		c.mu.Lock()
		delete(c.fills, k)
		c.mu.Unlock()
		close(fl.done)
	}()
	return fl
}

// readAhead starts fetches of the chunks after a read that continues the
// previous one in the same pack (or starts a pack), so that a sequential
// reader finds them cached, with several GETs in flight.
func (c *cache) readAhead(ctx context.Context, num uint64, first, last int64) {
	if c.ahead <= 0 {
		return
	}
	c.mu.Lock()
	prev, seen := c.streams[num]
	if len(c.streams) > 4096 {
		clear(c.streams)
	}
	c.streams[num] = last
	sequential := (!seen && first == 0) || (seen && (first == prev || first == prev+1))
	if !sequential {
		c.mu.Unlock()
		return
	}
	e := c.packs[num]
	var want []int64
	for ch := last + 1; ch <= last+int64(c.ahead); ch++ {
		if e != nil && e.size >= 0 && ch*c.chunk >= e.size {
			break
		}
		if e != nil && c.coveredLocked(e, ch, ch) {
			continue
		}
		if _, busy := c.fills[chunkKey{num, ch}]; busy {
			continue
		}
		want = append(want, ch)
	}
	c.mu.Unlock()
	pctx := blockstore.WithIOCounter(c.bg, blockstore.IOCounterFrom(ctx))
	for _, ch := range want {
		if c.prefetching.Add(1) > c.prefMax {
			c.prefetching.Add(-1)
			return
		}
		c.bgWG.Add(1)
		go func() {
			defer c.bgWG.Done()
			defer c.prefetching.Add(-1)
			fl := c.startFill(pctx, num, ch)
			<-fl.done
		}()
	}
}

// store writes a fetched chunk into the pack's .part file and marks it
// present.
func (c *cache) store(num uint64, ch int64, data []byte, size int64) {
	if len(data) == 0 {
		return
	}
	c.mu.Lock()
	e := c.packs[num]
	if e != nil && (e.whole || e.present[ch]) {
		c.mu.Unlock()
		return
	}
	if e == nil {
		e = &centry{num: num, size: size, present: map[int64]bool{}}
		e.elem = c.lru.PushFront(e)
		c.packs[num] = e
	}
	f, err := os.OpenFile(c.path(e), os.O_CREATE|os.O_RDWR, 0o600)
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("pack cache: cannot write", "dir", c.dir, "err", err)
		return
	}
	_, werr := f.WriteAt(data, ch*c.chunk)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		c.log.Warn("pack cache: cannot write", "dir", c.dir, "err", errors.Join(werr, cerr))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packs[num] != e || e.present[ch] {
		return // evicted or dropped meanwhile: the bytes went with the file
	}
	e.present[ch] = true
	if e.size < 0 {
		e.size = size
	}
	e.bytes += int64(len(data))
	c.bytes += int64(len(data))
	c.lru.MoveToFront(e.elem)
	c.evictLocked()
}

// adopt takes over a staged pack file that was just stored in the bucket.
func (c *cache) adopt(num uint64, staged string, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.packs[num]; old != nil {
		c.removeLocked(old)
	}
	e := &centry{num: num, whole: true, size: size, bytes: size}
	if err := os.Rename(staged, c.path(e)); err != nil {
		os.Remove(staged)
		c.log.Warn("pack cache: cannot keep a new pack", "dir", c.dir, "err", err)
		return
	}
	e.elem = c.lru.PushFront(e)
	c.packs[num] = e
	c.bytes += size
	c.evictLocked()
}

// drop forgets a pack (deleted from the bucket).
func (c *cache) drop(num uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.packs[num]; e != nil {
		c.removeLocked(e)
	}
	delete(c.streams, num)
}

func (c *cache) evictLocked() {
	for c.bytes > c.limit && c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back().Value.(*centry))
	}
}

// removeLocked forgets e and unlinks its file; readers that opened it
// finish on the unlinked inode.
func (c *cache) removeLocked(e *centry) {
	c.lru.Remove(e.elem)
	delete(c.packs, e.num)
	c.bytes -= e.bytes
	if err := os.Remove(c.path(e)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("pack cache: cannot remove", "file", c.path(e), "err", err)
	}
}

// close stops read-ahead and waits for it.
func (c *cache) close() {
	c.stopBg()
	c.bgWG.Wait()
}

// CacheStats are the pack cache's figures.
type CacheStats struct {
	Hits    int64 `json:"hits"`   // reads served from local disk
	Misses  int64 `json:"misses"` // reads that needed a GET (or waited for one)
	Fetches int64 `json:"fetches"`
	Bytes   int64 `json:"bytes"`
	Limit   int64 `json:"limit"`
	Packs   int   `json:"packs"`
}

func (c *cache) stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Fetches: c.fetches.Load(), Bytes: c.bytes, Limit: c.limit, Packs: len(c.packs)}
}
