package blockstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// damageLog remembers the blocks scrub removed as damaged while maps were
// being written. An ingest that found such a block stored (dedupe) just
// before scrub removed it would commit a map that is damaged from the
// start; Commit checks the log and refuses. Guarded by Store.mu.
type damageLog struct {
	seq     uint64
	entries []damageEntry
}

type damageEntry struct {
	seq uint64
	h   Hash
}

// recordDamage notes blocks scrub removed.
func (s *Store) recordDamage(hs []Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mapsUncommittedLocked() {
		// No ingest can have referred to them: nothing to remember.
		s.damage.seq++
		s.damage.entries = nil
		return
	}
	for _, h := range hs {
		s.damage.seq++
		s.damage.entries = append(s.damage.entries, damageEntry{s.damage.seq, h})
	}
}

// ErrDamagedDuringBackup means a block a backup refers to was found
// damaged and removed by scrub while the backup ran. Running the backup
// again stores the block anew.
var ErrDamagedDuringBackup = errors.New("a block this backup refers to was found damaged by scrub while it ran; run the backup again to store it anew")

// checkDamageSince fails if map m refers to a block removed as damaged
// since its ingest began and not stored again since.
func (s *Store) checkDamageSince(ctx context.Context, m *PendingMap) error {
	s.mu.Lock()
	var suspects map[Hash]struct{}
	for _, e := range s.damage.entries {
		if e.seq > m.damageSeq {
			if suspects == nil {
				suspects = map[Hash]struct{}{}
			}
			suspects[e.h] = struct{}{}
		}
	}
	s.mu.Unlock()
	if len(suspects) == 0 {
		return nil
	}
	var bad Hash
	err := s.eachMapSegment(ctx, m.Info.ID, &m.Info, nil, func(_ int64, hs []Hash) error {
		for _, h := range hs {
			if _, ok := suspects[h]; !ok {
				continue
			}
			present, err := s.HasBlock(h)
			if err != nil {
				return err
			}
			if !present {
				bad = h
				return errStop
			}
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return fmt.Errorf("block %s: %w", bad, ErrDamagedDuringBackup)
	}
	return err
}

// mapsUncommittedLocked reports whether a map is being written or
// waits for its commit (an ingest's or a finished import's): the damage
// log matters only while one does. The caller holds s.mu.
func (s *Store) mapsUncommittedLocked() bool {
	return len(s.pending)+len(s.importing)+len(s.finished) > 0
}

// errStop ends an iteration early.
var errStop = errors.New("stop")

// deleteIndexIf removes the index entry of h if it still points at loc
// (scrub's removal of a damaged copy must not remove a good copy written
// since). It reports whether it removed the entry.
func (s *Store) deleteIndexIf(h Hash, loc location) (bool, error) {
	removed := false
	for range 10 {
		removed = false
		err := s.db.Update(func(txn *badger.Txn) error {
			cur, err := s.lookupTxn(txn, h)
			if err != nil || cur != loc {
				return err
			}
			removed = true
			n, err := removalsTxn(txn)
			if err != nil {
				return err
			}
			if err := txn.Set(keyMetaRemovals, binary.BigEndian.AppendUint64(nil, n+1)); err != nil {
				return err
			}
			return txn.Delete(indexKey(h))
		})
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		if errors.Is(err, errNotIndexed) {
			return false, nil
		}
		return removed, err
	}
	return false, fmt.Errorf("remove index entry of block %s: too many conflicting writers", h)
}

// removalsTxn reads how many index entries scrub has removed, ever.
func removalsTxn(txn *badger.Txn) (uint64, error) {
	v, err := getValue(txn, keyMetaRemovals)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read meta/removals: %w", err)
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("meta/removals of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// removals reads the count in a fresh view.
func (s *Store) removals() (uint64, error) {
	var n uint64
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		n, err = removalsTxn(txn)
		return err
	})
	return n, err
}
