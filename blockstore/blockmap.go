package blockstore

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/zeebo/blake3"
)

// MapInfo is the header of a committed block map.
type MapInfo struct {
	ID        MapID       `json:"-"`
	Size      int64       `json:"size"`
	BlockSize int         `json:"block_size"`
	Created   time.Time   `json:"created"`
	Stats     IngestStats `json:"stats"`
}

// Blocks returns the number of blocks of the map (the last may be partial).
func (m MapInfo) Blocks() int64 { return blocksFor(m.Size, m.BlockSize) }

func blocksFor(size int64, bs int) int64 { return (size + int64(bs) - 1) / int64(bs) }

// segmentChecksumSize is the length of the BLAKE3 checksum that ends every
// stored segment. Badger does not verify values by default, and a flipped
// bit in a map must not turn a block into the zero marker (wrong bytes).
const segmentChecksumSize = 16

// encodeSegment returns the stored form of a segment's hashes.
func encodeSegment(hashes []Hash) []byte {
	out := make([]byte, 0, len(hashes)*HashSize+segmentChecksumSize)
	for i := range hashes {
		out = append(out, hashes[i][:]...)
	}
	sum := blake3.Sum256(out)
	return append(out, sum[:segmentChecksumSize]...)
}

// DecodeSegment parses a stored segment, verifying its checksum and length.
// It never panics, whatever v holds.
func DecodeSegment(v []byte) ([]Hash, error) {
	if len(v) < segmentChecksumSize {
		return nil, fmt.Errorf("segment of %d bytes is shorter than its checksum", len(v))
	}
	body, sum := v[:len(v)-segmentChecksumSize], v[len(v)-segmentChecksumSize:]
	if len(body)%HashSize != 0 || len(body)/HashSize > SegmentEntries || len(body) == 0 {
		return nil, fmt.Errorf("segment body of %d bytes is not 1..%d hashes", len(body), SegmentEntries)
	}
	want := blake3.Sum256(body)
	if !bytes.Equal(want[:segmentChecksumSize], sum) {
		return nil, fmt.Errorf("segment checksum mismatch")
	}
	hs := make([]Hash, len(body)/HashSize)
	for i := range hs {
		copy(hs[i][:], body[i*HashSize:])
	}
	return hs, nil
}

// MapInfo returns the header of committed map id, or ErrMapNotFound.
func (s *Store) MapInfo(id MapID) (MapInfo, error) {
	var info MapInfo
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		info, err = mapInfoTxn(txn, id)
		return err
	})
	return info, err
}

func mapInfoTxn(txn *badger.Txn, id MapID) (MapInfo, error) {
	v, err := getValue(txn, mapKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return MapInfo{}, fmt.Errorf("map %s: %w", id, ErrMapNotFound)
	}
	if err != nil {
		return MapInfo{}, fmt.Errorf("read map %s: %w", id, err)
	}
	var info MapInfo
	if err := json.Unmarshal(v, &info); err != nil {
		return MapInfo{}, fmt.Errorf("decode map header %s: %w", id, err)
	}
	info.ID = id
	return info, nil
}

// ListMaps returns the headers of all committed maps.
func (s *Store) ListMaps() ([]MapInfo, error) {
	var out []MapInfo
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixMap), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var id MapID
			copy(id[:], it.Item().Key()[len(prefixMap):])
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			var info MapInfo
			if err := json.Unmarshal(v, &info); err != nil {
				return fmt.Errorf("decode map header %s: %w", id, err)
			}
			info.ID = id
			out = append(out, info)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list maps: %w", err)
	}
	return out, nil
}

// segment returns the hashes of segment seg of map id; nil (no error) when
// the segment is not stored because all its blocks are zero.
func (s *Store) segment(id MapID, seg int64) ([]Hash, error) {
	key := segKey{id, seg}
	if hs, ok := s.segCache.get(key); ok {
		return hs, nil
	}
	release, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var hs []Hash
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(segmentKey(id, seg))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			hs, err = DecodeSegment(v)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("map %s segment %d: %w", id, seg, err)
	}
	s.segCache.put(key, hs)
	return hs, nil
}

// BlockHash returns the hash of block i of map id (the zero hash for a
// zero block). Cost: one cached segment lookup, whatever the map's size.
func (s *Store) BlockHash(id MapID, i int64) (Hash, error) {
	hs, err := s.segment(id, i/SegmentEntries)
	if err != nil {
		return Hash{}, err
	}
	j := int(i % SegmentEntries)
	if j >= len(hs) {
		return Hash{}, nil
	}
	return hs[j], nil
}

// Commit makes pending maps visible: it syncs their blocks and segments,
// then writes every map header and whatever extra writes (the catalog's
// records) in one transaction, then syncs again. Either all maps and the
// extra writes become visible, or none do.
func (s *Store) Commit(ctx context.Context, maps []*PendingMap, extra func(txn *badger.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("commit: sync data: %w", err)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, m := range maps {
			v, err := json.Marshal(m.Info)
			if err != nil {
				return err
			}
			if err := txn.Set(mapKey(m.Info.ID), v); err != nil {
				return err
			}
		}
		if extra != nil {
			return extra(txn)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("commit: sync header: %w", err)
	}
	s.mu.Lock()
	for _, m := range maps {
		delete(s.pending, m.Info.ID)
	}
	s.mu.Unlock()
	return nil
}

// DeleteMapTxn removes map id's header inside txn, which makes the map
// invisible at once. Its segments become orphans for Purge or GC to remove.
func DeleteMapTxn(txn *badger.Txn, id MapID) error {
	return txn.Delete(mapKey(id))
}

// PurgeSegments deletes the stored segments of a map that has no header
// (deleted or never committed). Blocks are left to GC.
func (s *Store) PurgeSegments(ctx context.Context, id MapID) error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		if _, err := txn.Get(mapKey(id)); err == nil {
			return fmt.Errorf("map %s is committed; delete its header first", id)
		}
		prefix := append([]byte(prefixSegment), id[:]...)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("purge segments of map %s: %w", id, err)
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := wb.Delete(k); err != nil {
			return fmt.Errorf("purge segments of map %s: %w", id, err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("purge segments of map %s: %w", id, err)
	}
	s.segCache.dropMap(id)
	return nil
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
