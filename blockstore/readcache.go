package blockstore

import (
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"
)

// ReadCache is a local file that keeps decoded, verified blocks of one
// volume, so that reading a block again costs a pread instead of a
// decode and a BLAKE3 of the whole block (copy-on-read, for attached NBD
// exports whose clients read the same blocks again and again: a VM's
// working set, fio, a database).
//
// What goes in: a block loaded from the store for the second time (the
// first load only marks it seen; a disk read once from end to end, a
// copy or a boot, does not write the file), and every block a client
// asks to cache (NBD_CMD_CACHE). The file has a fixed number of
// block-sized slots; when they are used up, a clock sweep evicts blocks
// not read since the hand last passed.
//
// Verification. Bytes read from the store are verified against their
// BLAKE3 hash before they reach the cache. What the cache file gives
// back is checked against a CRC32C of every 4 KiB sector, computed from
// the verified bytes and kept in memory (4 bytes per 4 KiB): a flipped
// bit, a torn or stray write, a file changed behind csbs's back all fail
// the check, and the read falls back to the store. CRC32C is not a
// cryptographic hash, and it need not be: whoever can write the cache
// file can also write the packs and the map files in the same data
// directory, and the CRC is there to catch damage, not an attacker with
// root. Its cost is what matters: about 0.2 µs per 4 KiB (SSE4.2), where
// re-verifying means decoding and hashing 64 KiB per 4 KiB read. Trusting
// the file unchecked ("csbs alone writes it") would break the promise
// that no byte leaves the appliance unverified, for the price of that
// 0.2 µs; it was not taken.
//
// The file is created unlinked: it disappears when closed or when the
// process dies, so nothing stale is ever read from a previous run. It
// grows only while the store's file system keeps twice the store's
// free-space reserve.
//
// A ReadCache is safe for concurrent use.
type ReadCache struct {
	f       *os.File
	bs      int64
	sectors int64 // 4 KiB sectors per block
	blocks  int64 // blocks of the volume
	slots   int64 // slots the file may hold
	space   func(need int64) error

	crc  *crc32.Table // Castagnoli: SSE4.2 computes it
	bufs sync.Pool    // *[]byte scratch for reads not aligned to sectors

	shards [readCacheShards]rcShard
	chunks []atomic.Pointer[rcChunk] // slots, allocated as the file grows
	seen   []atomic.Uint64           // one bit per volume block: loaded from the store once

	allocMu  sync.Mutex
	used     int64 // slots handed out so far; the file covers them
	free     []int64
	hand     int64
	grown    int64 // file bytes approved by space
	disabled atomic.Bool

	hits, misses, inserts, evictions, bad atomic.Int64
}

const (
	readCacheShards = 64
	rcSector        = 4096
	rcChunkSlots    = 1024
	// rcGrowStep is how much the file may grow between two free-space
	// checks.
	rcGrowStep = 64 << 20
)

type rcShard struct {
	mu sync.RWMutex
	m  map[int64]int64 // block → slot
}

type rcChunk struct {
	slot [rcChunkSlots]rcSlot
}

// Slot states besides an owner block (≥ 0).
const (
	slotFree = -1 // free, or being filled
	slotDead = -2 // dropped after a failed check; reusable once unpinned
)

type rcSlot struct {
	block atomic.Int64 // owner block, slotFree or slotDead
	pins  atomic.Int32 // readers in a pread of this slot
	ref   atomic.Bool  // read since the clock hand last passed
	sums  []uint32     // CRC32C per sector; written before the slot is published
}

// ReadCacheStats are a read cache's counters.
type ReadCacheStats struct {
	Hits, Misses, Inserts, Evictions int64
	// Bad counts reads whose CRC did not match: they went to the store.
	Bad int64
	// Bytes is the data the file holds; Limit its largest size.
	Bytes, Limit int64
}

// newReadCache makes an unlinked cache file in dir for a volume of
// blocks blocks of bs bytes, holding at most maxBytes.
func newReadCache(dir string, bs, blocks, maxBytes int64, space func(int64) error) (*ReadCache, error) {
	if bs%rcSector != 0 {
		return nil, fmt.Errorf("read cache: block size %d is not a multiple of %d", bs, rcSector)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("read cache: %w", err)
	}
	f, err := os.CreateTemp(dir, "volume-*.rcache")
	if err != nil {
		return nil, fmt.Errorf("read cache: %w", err)
	}
	// Unlinked at once: the space comes back when it is closed, also
	// when the process dies.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("read cache: %w", err)
	}
	slots := min(maxBytes/bs, blocks)
	rc := &ReadCache{
		f: f, bs: bs, sectors: bs / rcSector, blocks: blocks, slots: slots, space: space,
		chunks: make([]atomic.Pointer[rcChunk], (slots+rcChunkSlots-1)/rcChunkSlots),
		seen:   make([]atomic.Uint64, (blocks+63)/64),
		crc:    crc32.MakeTable(crc32.Castagnoli),
	}
	rc.bufs.New = func() any { b := make([]byte, 0, bs); return &b }
	for i := range rc.shards {
		rc.shards[i].m = map[int64]int64{}
	}
	return rc, nil
}

func (rc *ReadCache) shard(i int64) *rcShard { return &rc.shards[uint64(i)%readCacheShards] }

func (rc *ReadCache) slot(s int64) *rcSlot {
	return &rc.chunks[s/rcChunkSlots].Load().slot[s%rcChunkSlots]
}

// read fills p with the bytes of block i from in on, if the file holds
// the block and every sector read checks out. It reports whether it did.
func (rc *ReadCache) read(i int64, p []byte, in int64) bool {
	sh := rc.shard(i)
	sh.mu.RLock()
	s, ok := sh.m[i]
	var sl *rcSlot
	if ok {
		sl = rc.slot(s)
		sl.pins.Add(1)
	}
	sh.mu.RUnlock()
	if !ok {
		rc.misses.Add(1)
		return false
	}
	defer sl.pins.Add(-1)
	sl.ref.Store(true)
	first, end := in/rcSector, (in+int64(len(p))+rcSector-1)/rcSector
	span := (end - first) * rcSector
	buf := p
	var pooled *[]byte
	if in%rcSector != 0 || int64(len(p)) != span {
		pooled = rc.bufs.Get().(*[]byte)
		if int64(cap(*pooled)) < span {
			*pooled = make([]byte, span)
		}
		buf = (*pooled)[:span]
		defer rc.bufs.Put(pooled)
	}
	if _, err := rc.f.ReadAt(buf, s*rc.bs+first*rcSector); err != nil {
		rc.drop(i, s)
		return false
	}
	for k := int64(0); k < end-first; k++ {
		if crc32.Checksum(buf[k*rcSector:(k+1)*rcSector], rc.crc) != sl.sums[first+k] {
			rc.bad.Add(1)
			rc.drop(i, s)
			return false
		}
	}
	if pooled != nil {
		copy(p, buf[in-first*rcSector:])
	}
	rc.hits.Add(1)
	return true
}

// loaded is told about every load of block i from the store (b is
// verified). The second load puts the block in the file.
func (rc *ReadCache) loaded(i int64, b []byte) {
	if i < 0 || i >= rc.blocks {
		return
	}
	w := &rc.seen[i/64]
	bit := uint64(1) << (i % 64)
	if w.Or(bit)&bit == 0 {
		return // first load: remember it
	}
	rc.put(i, b)
}

// has reports whether the file holds block i.
func (rc *ReadCache) has(i int64) bool {
	sh := rc.shard(i)
	sh.mu.RLock()
	_, ok := sh.m[i]
	sh.mu.RUnlock()
	return ok
}

// put writes verified block i into a slot and publishes it.
func (rc *ReadCache) put(i int64, b []byte) {
	if rc.disabled.Load() || rc.has(i) || int64(len(b)) != rc.bs {
		return
	}
	s, ok := rc.alloc()
	if !ok {
		return
	}
	sl := rc.slot(s)
	if _, err := rc.f.WriteAt(b, s*rc.bs); err != nil {
		// A write error (the disk is full after all, or failing) ends
		// caching; reads go on from what the file holds and the store.
		rc.disabled.Store(true)
		rc.release(s)
		return
	}
	if sl.sums == nil {
		sl.sums = make([]uint32, rc.sectors)
	}
	for k := range rc.sectors {
		sl.sums[k] = crc32.Checksum(b[k*rcSector:(k+1)*rcSector], rc.crc)
	}
	sh := rc.shard(i)
	sh.mu.Lock()
	if _, dup := sh.m[i]; dup {
		sh.mu.Unlock()
		rc.release(s)
		return
	}
	sh.m[i] = s
	sl.block.Store(i)
	sl.ref.Store(true)
	sh.mu.Unlock()
	rc.inserts.Add(1)
}

// alloc returns a slot to fill: a free one, a new one while the file may
// grow, else one the clock sweep evicts.
func (rc *ReadCache) alloc() (int64, bool) {
	rc.allocMu.Lock()
	defer rc.allocMu.Unlock()
	if n := len(rc.free); n > 0 {
		s := rc.free[n-1]
		rc.free = rc.free[:n-1]
		return s, true
	}
	if rc.used < rc.slots {
		if end := (rc.used + 1) * rc.bs; end > rc.grown {
			step := min(int64(rcGrowStep), (rc.slots-rc.used)*rc.bs)
			if rc.space != nil && rc.space(step) != nil {
				rc.slots = rc.used // no room to grow: evict from here on
				return rc.evictLocked()
			}
			rc.grown += step
		}
		s := rc.used
		if rc.chunks[s/rcChunkSlots].Load() == nil {
			c := &rcChunk{}
			for k := range c.slot {
				c.slot[k].block.Store(slotFree)
			}
			rc.chunks[s/rcChunkSlots].Store(c)
		}
		rc.used++
		return s, true
	}
	return rc.evictLocked()
}

// evictLocked runs the clock hand to a slot that was not read since the
// hand last passed and that no reader has pinned, and unpublishes it.
func (rc *ReadCache) evictLocked() (int64, bool) {
	for range 2*rc.used + 1 {
		if rc.used == 0 {
			return 0, false
		}
		s := rc.hand
		rc.hand = (rc.hand + 1) % rc.used
		sl := rc.slot(s)
		if sl.ref.Swap(false) {
			continue
		}
		blk := sl.block.Load()
		if blk == slotDead && sl.pins.Load() == 0 {
			// Nobody can pin it any more (it left the index), so it
			// stays unpinned.
			sl.block.Store(slotFree)
			return s, true
		}
		if blk < 0 {
			continue // being filled, or dead and still read
		}
		sh := rc.shard(blk)
		sh.mu.Lock()
		// Readers pin under the read lock, so no pin can appear while we
		// hold the write lock.
		if sl.pins.Load() != 0 || sh.m[blk] != s {
			sh.mu.Unlock()
			continue
		}
		delete(sh.m, blk)
		sl.block.Store(slotFree)
		sh.mu.Unlock()
		rc.evictions.Add(1)
		return s, true
	}
	return 0, false
}

// release gives back a slot that was allocated but not published.
func (rc *ReadCache) release(s int64) {
	rc.allocMu.Lock()
	rc.free = append(rc.free, s)
	rc.allocMu.Unlock()
}

// drop unpublishes block i (in slot s) after a failed read.
func (rc *ReadCache) drop(i, s int64) {
	sh := rc.shard(i)
	sh.mu.Lock()
	if cur, ok := sh.m[i]; !ok || cur != s {
		sh.mu.Unlock()
		return
	}
	delete(sh.m, i)
	// Readers may still be in the slot: the clock sweep reuses it once
	// they are gone.
	rc.slot(s).block.Store(slotDead)
	sh.mu.Unlock()
}

// Stats returns the cache's counters.
func (rc *ReadCache) Stats() ReadCacheStats {
	n := int64(0)
	for i := range rc.shards {
		sh := &rc.shards[i]
		sh.mu.RLock()
		n += int64(len(sh.m))
		sh.mu.RUnlock()
	}
	rc.allocMu.Lock()
	limit := rc.slots * rc.bs
	rc.allocMu.Unlock()
	return ReadCacheStats{
		Hits: rc.hits.Load(), Misses: rc.misses.Load(), Inserts: rc.inserts.Load(),
		Evictions: rc.evictions.Load(), Bad: rc.bad.Load(),
		Bytes: n * rc.bs, Limit: limit,
	}
}

// close closes (and so frees) the file.
func (rc *ReadCache) close() error {
	rc.disabled.Store(true)
	if err := rc.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close read cache: %w", err)
	}
	return nil
}
