package blockstore

import (
	"container/list"
	"context"
	"sync"
)

// blockCache is a byte-bounded LRU of verified, decompressed blocks keyed
// by hash, shared by all volumes (dedupe makes blocks common across
// backups). fill collapses concurrent misses of one block into one load.
type blockCache struct {
	mu       sync.Mutex
	limit    int64
	size     int64
	lru      *list.List // of *cacheEntry, front = newest
	entries  map[Hash]*list.Element
	inflight map[Hash]*pendingLoad
	hits     uint64
	misses   uint64
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
	return &blockCache{limit: limit, lru: list.New(), entries: map[Hash]*list.Element{}, inflight: map[Hash]*pendingLoad{}}
}

func (c *blockCache) get(h Hash) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[h]; ok {
		c.lru.MoveToFront(e)
		c.hits++
		return e.Value.(*cacheEntry).b, true
	}
	return nil, false
}

// fill loads h once however many goroutines ask for it at the same time.
// Errors are not cached: a transient failure may succeed on retry, and a
// corrupt block fails again anyway.
func (c *blockCache) fill(ctx context.Context, h Hash, load func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.entries[h]; ok {
		c.lru.MoveToFront(e)
		c.hits++
		c.mu.Unlock()
		return e.Value.(*cacheEntry).b, nil
	}
	if p, ok := c.inflight[h]; ok {
		c.mu.Unlock()
		select {
		case <-p.done:
			return p.b, p.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p := &pendingLoad{done: make(chan struct{})}
	c.inflight[h] = p
	c.misses++
	c.mu.Unlock()

	p.b, p.err = load()

	c.mu.Lock()
	delete(c.inflight, h)
	if p.err == nil {
		c.insertLocked(h, p.b)
	}
	c.mu.Unlock()
	close(p.done)
	return p.b, p.err
}

func (c *blockCache) insertLocked(h Hash, b []byte) {
	if int64(len(b)) > c.limit {
		return
	}
	if _, ok := c.entries[h]; ok {
		return
	}
	c.entries[h] = c.lru.PushFront(&cacheEntry{h: h, b: b})
	c.size += int64(len(b))
	for c.size > c.limit {
		old := c.lru.Back()
		ent := old.Value.(*cacheEntry)
		c.lru.Remove(old)
		delete(c.entries, ent.h)
		c.size -= int64(len(ent.b))
	}
}

// drop removes h, used after a block is found damaged or swept.
func (c *blockCache) drop(h Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[h]; ok {
		c.lru.Remove(e)
		delete(c.entries, h)
		c.size -= int64(len(e.Value.(*cacheEntry).b))
	}
}

// CacheStats are the block cache's counters.
type CacheStats struct {
	Hits, Misses uint64
	Bytes, Limit int64
}

func (c *blockCache) stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Hits: c.hits, Misses: c.misses, Bytes: c.size, Limit: c.limit}
}

// CacheStats returns the block cache's hit and miss counts and size.
func (s *Store) CacheStats() CacheStats { return s.cache.stats() }
