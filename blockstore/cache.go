package blockstore

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// blockCache is a byte-bounded cache of verified, decompressed blocks
// keyed by hash, shared by all volumes (dedupe makes blocks common across
// backups). It is split into shards by hash so that readers on many cores
// do not queue on one lock; each shard is an LRU with its share of the
// bytes. fill collapses concurrent misses of one block into one load.
type blockCache struct {
	shards []cacheShard
	limit  int64
	hits   atomic.Uint64
	misses atomic.Uint64
}

// maxCacheShards bounds the shards; a shard holds at least 1 MiB, so a
// small cache has few shards and stays a useful LRU.
const maxCacheShards = 64

type cacheShard struct {
	mu       sync.Mutex
	limit    int64
	size     int64
	lru      *list.List // of *cacheEntry, front = newest
	entries  map[Hash]*list.Element
	inflight map[Hash]*pendingLoad
}

type cacheEntry struct {
	h Hash
	b []byte
}

type pendingLoad struct {
	done chan struct{}
	b    []byte
	err  error
}

func newBlockCache(limit int64) *blockCache {
	n := 1
	for n < maxCacheShards && limit/int64(2*n) >= 1<<20 {
		n *= 2
	}
	c := &blockCache{limit: limit, shards: make([]cacheShard, n)}
	for i := range c.shards {
		c.shards[i] = cacheShard{limit: limit / int64(n), lru: list.New(), entries: map[Hash]*list.Element{}, inflight: map[Hash]*pendingLoad{}}
	}
	return c
}

// shard picks h's shard from hash bytes that the map key does not start
// with, so shards and map buckets spread independently.
func (c *blockCache) shard(h Hash) *cacheShard { return &c.shards[int(h[31])%len(c.shards)] }

func (c *blockCache) get(h Hash) ([]byte, bool) {
	sh := c.shard(h)
	sh.mu.Lock()
	e, ok := sh.entries[h]
	if ok {
		sh.lru.MoveToFront(e)
	}
	sh.mu.Unlock()
	if !ok {
		return nil, false
	}
	c.hits.Add(1)
	return e.Value.(*cacheEntry).b, true
}

// fill loads h once however many goroutines ask for it at the same time,
// and reports whether this call was the one that loaded it. Errors are
// not cached: a transient failure may succeed on retry, and a corrupt
// block fails again anyway.
//
// A waiter whose loader was canceled (its reader went away) while the
// waiter's own context is live loads the block itself: one reader's
// cancellation is never another's error.
func (c *blockCache) fill(ctx context.Context, h Hash, load func() ([]byte, error)) ([]byte, bool, error) {
	sh := c.shard(h)
	sh.mu.Lock()
	for {
		if e, ok := sh.entries[h]; ok {
			sh.lru.MoveToFront(e)
			sh.mu.Unlock()
			c.hits.Add(1)
			return e.Value.(*cacheEntry).b, false, nil
		}
		p, ok := sh.inflight[h]
		if !ok {
			break
		}
		sh.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if !isContextErr(p.err) || ctx.Err() != nil {
			return p.b, false, p.err
		}
		sh.mu.Lock()
	}
	p := &pendingLoad{done: make(chan struct{})}
	sh.inflight[h] = p
	sh.mu.Unlock()
	c.misses.Add(1)

	p.b, p.err = load()

	sh.mu.Lock()
	delete(sh.inflight, h)
	if p.err == nil {
		sh.insertLocked(h, p.b)
	}
	sh.mu.Unlock()
	close(p.done)
	return p.b, true, p.err
}

func (sh *cacheShard) insertLocked(h Hash, b []byte) {
	if int64(len(b)) > sh.limit {
		return
	}
	if _, ok := sh.entries[h]; ok {
		return
	}
	sh.entries[h] = sh.lru.PushFront(&cacheEntry{h: h, b: b})
	sh.size += int64(len(b))
	for sh.size > sh.limit {
		old := sh.lru.Back()
		ent := old.Value.(*cacheEntry)
		sh.lru.Remove(old)
		delete(sh.entries, ent.h)
		sh.size -= int64(len(ent.b))
	}
}

// drop removes h, used after a block is found damaged or swept.
func (c *blockCache) drop(h Hash) {
	sh := c.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.entries[h]; ok {
		sh.lru.Remove(e)
		delete(sh.entries, h)
		sh.size -= int64(len(e.Value.(*cacheEntry).b))
	}
}

// CacheStats are the block cache's counters.
type CacheStats struct {
	Hits, Misses uint64
	Bytes, Limit int64
}

func (c *blockCache) stats() CacheStats {
	st := CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Limit: c.limit}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		st.Bytes += sh.size
		sh.mu.Unlock()
	}
	return st
}

// CacheStats returns the block cache's hit and miss counts and size.
func (s *Store) CacheStats() CacheStats { return s.cache.stats() }

// trim empties the cache (its memory goes back to the Go heap).
func (c *blockCache) trim() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		sh.lru.Init()
		clear(sh.entries)
		sh.size = 0
		sh.mu.Unlock()
	}
}

// TrimCache empties the block cache: an idle daemon gives the memory
// back (the next reads fill it again).
func (s *Store) TrimCache() { s.cache.trim() }

// isContextErr reports whether err is a canceled or expired context's.
func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
