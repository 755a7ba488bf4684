package blockstore

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// MapInfo is the header of a committed block map.
type MapInfo struct {
	ID        MapID       `json:"-"`
	Size      int64       `json:"size"`
	BlockSize int         `json:"block_size"`
	Created   time.Time   `json:"created"`
	Stats     IngestStats `json:"stats"`
	// Segments has bit i set when segment i is stored in the map file
	// (all-zero segments are not).
	Segments []byte `json:"segments"`
	// Staged: an import (a replica) being built; not a backup yet, but GC
	// keeps what it names.
	Staged bool `json:"staged,omitempty"`
	// Removals is the store's count of blocks scrub removed when the map
	// was committed: while the count stays the same, every block of the
	// map is still in the store (see keyMetaRemovals).
	Removals uint64 `json:"removals_at_commit,omitempty"`
}

// Blocks returns the number of blocks of the map (the last may be partial).
func (m MapInfo) Blocks() int64 { return blocksFor(m.Size, m.BlockSize) }

func blocksFor(size int64, bs int) int64 { return (size + int64(bs) - 1) / int64(bs) }

// MapInfo returns the header of committed map id, or ErrMapNotFound (also
// for a staged import).
func (s *Store) MapInfo(id MapID) (MapInfo, error) {
	info, err := s.mapHeader(id)
	if err == nil && info.Staged {
		return MapInfo{}, fmt.Errorf("map %s is an import in progress: %w", id, ErrMapNotFound)
	}
	return info, err
}

func decodeMapInfo(id MapID, item *badger.Item) (MapInfo, error) {
	var info MapInfo
	err := item.Value(func(v []byte) error { return json.Unmarshal(v, &info) })
	if err != nil {
		return MapInfo{}, fmt.Errorf("decode map header %s: %w", id, err)
	}
	info.ID = id
	return info, nil
}

// ListMaps returns the headers of all committed maps.
func (s *Store) ListMaps() ([]MapInfo, error) {
	var out []MapInfo
	err := s.db.View(func(txn *badger.Txn) error {
		return eachMapInfo(context.Background(), txn, func(info MapInfo) error {
			if !info.Staged {
				out = append(out, info)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list maps: %w", err)
	}
	return out, nil
}

// segment returns the hashes of segment seg of a committed map; nil (no
// error) when the segment is not stored because all its blocks are zero.
func (s *Store) segment(info *MapInfo, seg int64) ([]Hash, error) {
	if !info.segmentPresent(seg) {
		return nil, nil
	}
	key := segKey{info.ID, seg}
	if hs, ok := s.segCache.get(key); ok {
		return hs, nil
	}
	release, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	hs, err := s.readSegment(info, seg)
	if err != nil {
		return nil, err
	}
	s.segCache.put(key, hs)
	return hs, nil
}

// BlockHash returns the hash of block i of map id (the zero hash for a
// zero block). Cost: one cached segment lookup, whatever the map's size.
func (s *Store) BlockHash(id MapID, i int64) (Hash, error) {
	info, err := s.MapInfo(id)
	if err != nil {
		return Hash{}, err
	}
	return info.blockHash(s, i)
}

func (m *MapInfo) blockHash(s *Store, i int64) (Hash, error) {
	hs, err := s.segment(m, i/SegmentEntries)
	if err != nil {
		return Hash{}, err
	}
	j := int(i % SegmentEntries)
	if j >= len(hs) {
		return Hash{}, nil
	}
	return hs[j], nil
}

// Commit makes pending maps visible. Their blocks are indexed and their
// map files synced by Ingest; Commit syncs the index, then writes every
// map header and whatever extra writes (the catalog's records) in one
// transaction, then syncs again. Either all maps and the extra writes
// become visible, or none do. A map whose ingest referred to a block that
// scrub found damaged meanwhile is refused: it would be damaged from the
// start.
func (s *Store) Commit(ctx context.Context, maps []*PendingMap, extra func(txn *kv.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("commit: sync data: %w", err)
	}
	// From the damage check to the header, scrub removes nothing: a block
	// found present here is present when the map becomes visible.
	s.removeMu.RLock()
	defer s.removeMu.RUnlock()
	for _, m := range maps {
		if err := s.checkDamageSince(ctx, m); err != nil {
			return fmt.Errorf("commit map %s: %w", m.Info.ID, err)
		}
	}
	s.hook(HookCommitSynced)
	// Under s.mu, so that a GC or scrub snapshot sees each map either as
	// pending or as committed, never as neither.
	s.mu.Lock()
	err := s.db.Update(func(txn *badger.Txn) error {
		removals, err := removalsTxn(txn)
		if err != nil {
			return err
		}
		for _, m := range maps {
			m.Info.Removals = removals
			v, err := json.Marshal(m.Info)
			if err != nil {
				return err
			}
			if err := txn.Set(mapKey(m.Info.ID), v); err != nil {
				return err
			}
		}
		if extra != nil {
			return extra(kv.NewTxn(txn))
		}
		return nil
	})
	if err == nil {
		for _, m := range maps {
			delete(s.pending, m.Info.ID)
			delete(s.finished, m.Info.ID)
		}
		if !s.mapsUncommittedLocked() {
			s.damage.entries = nil // no map left that could need them
		}
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("commit: sync header: %w", err)
	}
	s.hook(HookCommitDone)
	return nil
}

// DeleteMapTxn removes map id's header inside txn, which makes the map
// invisible at once. Its file is then removed by PurgeMap, or by GC.
func DeleteMapTxn(txn *kv.Txn, id MapID) error {
	return txn.Badger().Delete(mapKey(id))
}

// PurgeMap deletes the file of a map that has no header (deleted or never
// committed), giving its space back. Blocks are left to GC.
func (s *Store) PurgeMap(ctx context.Context, id MapID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.View(func(txn *badger.Txn) error {
		if _, err := txn.Get(mapKey(id)); err == nil {
			return fmt.Errorf("map %s is committed; delete its header first", id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("purge map %s: %w", id, err)
	}
	s.mu.Lock()
	_, pending := s.pending[id]
	s.mu.Unlock()
	if pending {
		return fmt.Errorf("purge map %s: it is being written", id)
	}
	s.removeMapFile(id)
	return nil
}

func (s *Store) removeMapFile(id MapID) {
	p := s.mapPath(id)
	s.mapFiles.forget(p)
	os.Remove(p)
	s.segCache.dropMap(id)
}

type segKey struct {
	id  MapID
	seg int64
}

// segmentCache is a count-bounded LRU of decoded segments. Committed
// segments never change, so entries never go stale while a map exists.
type segmentCache struct {
	mu      sync.Mutex
	limit   int
	lru     *list.List
	entries map[segKey]*list.Element
}

type segEntry struct {
	k  segKey
	hs []Hash
}

func newSegmentCache(limit int) *segmentCache {
	return &segmentCache{limit: limit, lru: list.New(), entries: map[segKey]*list.Element{}}
}

func (c *segmentCache) get(k segKey) ([]Hash, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*segEntry).hs, true
	}
	return nil, false
}

func (c *segmentCache) put(k segKey, hs []Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; ok {
		return
	}
	c.entries[k] = c.lru.PushFront(&segEntry{k, hs})
	for c.lru.Len() > c.limit {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*segEntry).k)
	}
}

func (c *segmentCache) dropMap(id MapID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if k.id == id {
			c.lru.Remove(e)
			delete(c.entries, k)
		}
	}
}
