package blockstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// An import builds a map from hashes and block values that come from
// elsewhere (a replica of another appliance's backup) instead of from a
// disk. The map is staged from its start: its header is durable but
// marked staged, so it is no backup (OpenVolume refuses it, ListMaps
// skips it) while GC keeps every block its file names. Blocks that
// arrive therefore survive restarts and GC until the import finishes or
// is aborted, and a resumed import fetches only what is still missing.

// Import is a map being built from hashes. WriteSegment, EachMissing,
// Missing and Finish are for one goroutine; PutBlocks may be called from
// several at once (each call writes its own pack).
type Import struct {
	s         *Store
	info      MapInfo
	mw        *mapWriter
	damageSeq uint64
}

// BlockValue is a block as stored: its hash and its stored value (codec
// byte and payload).
type BlockValue struct {
	Hash  Hash
	Value []byte
}

// ErrImportIncomplete means an import still lacks blocks.
var ErrImportIncomplete = errors.New("import is missing blocks")

// BeginImport starts a staged map of a disk of size bytes.
func (s *Store) BeginImport(ctx context.Context, size int64) (*Import, error) {
	if err := s.checkSpace(0); err != nil {
		return nil, fmt.Errorf("begin import: %w", err)
	}
	id := NewMapID()
	info := MapInfo{ID: id, Size: size, BlockSize: s.blockSize, Created: time.Now().UTC(), Staged: true}
	s.mu.Lock()
	mw, err := s.createMap(id, size)
	if err == nil {
		err = s.putHeader(info)
		if err != nil {
			mw.abort()
		} else {
			s.importing[id] = mw
		}
	}
	seq := s.damage.seq
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("begin import: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return nil, fmt.Errorf("begin import: %w", err)
	}
	return &Import{s: s, info: info, mw: mw, damageSeq: seq}, ctx.Err()
}

// putHeader writes a map header (the caller holds s.mu where it matters).
func (s *Store) putHeader(info MapInfo) error {
	v, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(mapKey(info.ID), v) })
}

// ResumeImport reopens a staged map after a restart (or a failed run).
func (s *Store) ResumeImport(ctx context.Context, id MapID) (*Import, error) {
	info, err := s.mapHeader(id)
	if err != nil {
		return nil, fmt.Errorf("resume import %s: %w", id, err)
	}
	if !info.Staged {
		return nil, fmt.Errorf("resume import %s: the map is committed, not staged", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.importing[id]; busy {
		return nil, fmt.Errorf("resume import %s: it is in use", id)
	}
	f, err := os.OpenFile(s.mapPath(id), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("resume import %s: %w", id, err)
	}
	nblocks := info.Blocks()
	mw := &mapWriter{s: s, id: id, path: s.mapPath(id), f: f, nblocks: nblocks, present: make([]byte, (segmentsFor(nblocks)+7)/8)}
	// Which segments the file holds: those that verify (a slot a crash
	// tore is written again by the caller).
	err = s.eachMapSegment(ctx, id, nil, nil, func(seg int64, _ []Hash) error {
		mw.present[seg/8] |= 1 << (seg % 8)
		return nil
	})
	var bad *CorruptMapError
	if err != nil && !errors.As(err, &bad) {
		f.Close()
		return nil, fmt.Errorf("resume import %s: %w", id, err)
	}
	s.importing[id] = mw
	return &Import{s: s, info: info, mw: mw, damageSeq: s.damage.seq}, nil
}

// AbortImport drops a staged map; the blocks that arrived become garbage.
func (s *Store) AbortImport(ctx context.Context, id MapID) error {
	info, err := s.mapHeader(id)
	if errors.Is(err, ErrMapNotFound) {
		s.removeMapFile(id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("abort import %s: %w", id, err)
	}
	if !info.Staged {
		return fmt.Errorf("abort import %s: the map is committed, not staged", id)
	}
	s.mu.Lock()
	if mw, ok := s.importing[id]; ok {
		delete(s.importing, id)
		mw.close()
	}
	err = s.db.Update(func(txn *badger.Txn) error { return txn.Delete(mapKey(id)) })
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("abort import %s: %w", id, err)
	}
	s.removeMapFile(id)
	return ctx.Err()
}

// ID returns the staged map's id.
func (im *Import) ID() MapID { return im.info.ID }

// WriteSegment records segment seg's hashes.
func (im *Import) WriteSegment(seg int64, hs []Hash) error {
	if seg < 0 || seg >= segmentsFor(im.mw.nblocks) || len(hs) != segmentEntries(im.mw.nblocks, seg) {
		return fmt.Errorf("import %s: segment %d of %d hashes does not fit a map of %d blocks", im.info.ID, seg, len(hs), im.mw.nblocks)
	}
	if err := im.mw.writeSegment(seg, hs); err != nil {
		return err
	}
	// A GC that read this map before the segment arrived must not sweep
	// the blocks it names: the import finds them present and sends none.
	im.s.gate.touch(hs)
	return nil
}

// EachMissing calls fn with every non-zero hash the map names that the
// store does not hold. A hash the map names twice may come twice.
func (im *Import) EachMissing(ctx context.Context, fn func(h Hash) error) error {
	recent := map[Hash]struct{}{}
	return im.s.eachMapSegment(ctx, im.info.ID, nil, im.mw, func(_ int64, hs []Hash) error {
		for _, h := range hs {
			if h.IsZero() {
				continue
			}
			if _, dup := recent[h]; dup {
				continue
			}
			ok, err := im.s.HasBlock(h)
			if err != nil {
				return err
			}
			if ok {
				continue
			}
			if len(recent) >= recentLimit {
				clear(recent)
			}
			recent[h] = struct{}{}
			if err := fn(h); err != nil {
				return err
			}
		}
		return nil
	})
}

// Missing returns the distinct non-zero hashes the map names that the
// store does not hold. It holds them all in memory; EachMissing streams.
func (im *Import) Missing(ctx context.Context) ([]Hash, error) {
	seen := map[Hash]struct{}{}
	var out []Hash
	err := im.EachMissing(ctx, func(h Hash) error {
		if _, dup := seen[h]; !dup {
			seen[h] = struct{}{}
			out = append(out, h)
		}
		return nil
	})
	return out, err
}

// PutBlocks verifies each value (decoded, it must hash to its hash) and
// stores those the store lacks. They are durable and indexed when it
// returns. A value that does not verify fails the call with a
// *CorruptBlockError and is not stored; values before it are.
func (im *Import) PutBlocks(ctx context.Context, blocks []BlockValue) error {
	if err := im.s.checkSpace(0); err != nil {
		return fmt.Errorf("import %s: %w", im.info.ID, err)
	}
	var pw *packWriter
	defer func() {
		if pw != nil {
			pw.release()
		}
	}()
	dst := make([]byte, 0, im.s.blockSize)
	var failed error
	for _, b := range blocks {
		if _, err := im.s.decodeVerify(b.Hash, b.Value, dst); err != nil {
			failed = err
			break
		}
		ok, err := im.s.HasBlock(b.Hash)
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		if pw == nil {
			if pw, err = im.s.newPackWriter(); err != nil {
				return err
			}
		}
		if _, err := pw.add(b.Hash, b.Value); err != nil {
			return err
		}
		if pw.full() {
			p := pw
			pw = nil
			if _, err := im.s.publishPack(ctx, p); err != nil {
				return fmt.Errorf("import %s: %w", im.info.ID, err)
			}
		}
	}
	if pw != nil {
		p := pw
		pw = nil
		if _, err := im.s.publishPack(ctx, p); err != nil {
			return fmt.Errorf("import %s: %w", im.info.ID, err)
		}
	}
	if failed != nil {
		return fmt.Errorf("import %s: %w", im.info.ID, failed)
	}
	return nil
}

// Finish checks that the store holds every block the map names, syncs
// the map file, and returns the map to Commit (with the catalog's
// record). Until Commit the map stays staged.
func (im *Import) Finish(ctx context.Context) (*PendingMap, error) {
	missing := 0
	err := im.EachMissing(ctx, func(Hash) error { missing++; return nil })
	if err != nil {
		return nil, fmt.Errorf("finish import %s: %w", im.info.ID, err)
	}
	if missing > 0 {
		return nil, fmt.Errorf("finish import %s: %d blocks: %w", im.info.ID, missing, ErrImportIncomplete)
	}
	if err := fdatasync(im.mw.f); err != nil {
		return nil, fmt.Errorf("finish import %s: %w", im.info.ID, err)
	}
	if err := syncDir(filepath.Dir(im.mw.path)); err != nil {
		return nil, err
	}
	info := im.info
	info.Staged = false
	info.Segments = append([]byte(nil), im.mw.present...)
	info.Stats = IngestStats{LogicalBytes: info.Size}
	err = im.s.eachMapSegment(ctx, info.ID, &info, im.mw, func(_ int64, hs []Hash) error {
		for _, h := range hs {
			if h.IsZero() {
				info.Stats.ZeroBlocks++
			} else {
				info.Stats.DataBlocks++
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish import %s: %w", im.info.ID, err)
	}
	info.Stats.ZeroBlocks += info.Blocks() - info.Stats.ZeroBlocks - info.Stats.DataBlocks
	im.s.mu.Lock()
	delete(im.s.importing, info.ID)
	// Until Commit or Abort, scrub's removals are recorded for it.
	im.s.finished[info.ID] = struct{}{}
	im.s.mu.Unlock()
	im.mw.close()
	return &PendingMap{s: im.s, Info: info, damageSeq: im.damageSeq}, nil
}

// MapHashes calls fn with the hashes of every stored segment of committed
// map id in order; segments of only zero blocks are not stored and are
// skipped.
func (s *Store) MapHashes(ctx context.Context, id MapID, fn func(seg int64, hs []Hash) error) error {
	info, err := s.MapInfo(id)
	if err != nil {
		return err
	}
	return s.eachMapSegment(ctx, id, &info, nil, fn)
}

// StoredValue returns block h's stored value (codec byte and payload) as
// it lies in its pack, verified before it is returned.
func (s *Store) StoredValue(ctx context.Context, h Hash) ([]byte, error) {
	for range 3 {
		loc, err := s.lookup(h)
		if errors.Is(err, errNotIndexed) {
			return nil, &MissingBlockError{Hash: h, Block: -1}
		}
		if err != nil {
			return nil, fmt.Errorf("read block %s: %w", h, err)
		}
		v := make([]byte, loc.len)
		if _, err := s.packs.ReadAt(ctx, loc.pack, v, int64(loc.off)); err != nil {
			if errors.Is(err, ErrPackNotFound) {
				continue // moved by GC meanwhile
			}
			if errors.Is(err, io.EOF) {
				return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: "pack is truncated"}
			}
			return nil, fmt.Errorf("read block %s (%s): %w", h, loc, err)
		}
		if _, err := s.decodeVerify(h, v, make([]byte, 0, s.blockSize)); err != nil {
			return nil, err
		}
		return v, nil
	}
	return nil, &MissingBlockError{Hash: h, Block: -1, Reason: "its pack keeps disappearing"}
}

// mapHeader reads a header, staged or not.
func (s *Store) mapHeader(id MapID) (MapInfo, error) {
	var info MapInfo
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(mapKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("map %s: %w", id, ErrMapNotFound)
		}
		if err != nil {
			return err
		}
		info, err = decodeMapInfo(id, item)
		return err
	})
	return info, err
}
