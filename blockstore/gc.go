package blockstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// GCStats reports one garbage collection.
type GCStats struct {
	Candidates     int64         `json:"blocks_examined"`
	Marked         int64         `json:"blocks_live"`
	FreedBlocks    int64         `json:"blocks_freed"`
	FreedBytes     int64         `json:"bytes_freed"` // stored (compressed) bytes of the swept blocks
	KeptInFlight   int64         `json:"blocks_kept_for_backups_in_progress"`
	OrphanSegments int64         `json:"orphan_segments_deleted"`
	VlogRewrites   int           `json:"value_log_files_rewritten"`
	DiskBefore     int64         `json:"disk_bytes_before"`
	DiskAfter      int64         `json:"disk_bytes_after"`
	Duration       time.Duration `json:"duration"`
}

const sweepBatch = 1000

// GC deletes blocks no live map refers to, and segments of maps that
// neither exist nor are being written, then lets Badger's value-log GC give
// the space back to the file system. It runs while backups, exports and
// restores go on.
//
// Why it never sweeps a block in use:
//
//   - Committed maps: mark reads every segment of every map that has a
//     header when the mark transaction starts; a map deleted later only
//     has fewer readers left.
//   - Backups being written: every hash an ingest refers to is held in
//     the gate from before its existence lookup until the segment naming
//     it is visible, and released hashes are remembered for the rest of
//     this run (gcGate). Sweep deletes a candidate only under the gate's
//     lock, after checking it is neither held nor released-while-running.
//     So an ingest that found block h stored either held h before the
//     sweep looked (h is kept) or looked after h was deleted (its lookup
//     misses and it writes h again).
//   - Candidates are the blocks stored when GC started; blocks written
//     later are not candidates.
//   - Readers (NBD, FUSE, restores) read committed maps only; the daemon
//     refuses to delete a backup while it is read.
func (s *Store) GC(ctx context.Context) (GCStats, error) {
	start := time.Now()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	release, err := s.enter()
	if err != nil {
		return GCStats{}, err
	}
	defer release()
	var st GCStats
	st.DiskBefore, _ = s.DiskUsage()

	s.gate.mu.Lock()
	s.gate.gcOn = true
	s.gate.touched = map[Hash]struct{}{}
	s.gate.mu.Unlock()
	defer func() {
		s.gate.mu.Lock()
		s.gate.gcOn = false
		s.gate.touched = nil
		s.gate.mu.Unlock()
	}()

	// Candidates are the blocks of this snapshot, taken before marking;
	// iterating it later instead of listing it now keeps GC's memory to
	// the mark set.
	snapshot := s.db.NewTransaction(false)
	defer snapshot.Discard()
	marked, orphans, err := s.mark(ctx)
	if err != nil {
		return st, err
	}
	st.Marked = int64(len(marked))

	type candidate struct {
		h    Hash
		size int64
	}
	var batch []candidate
	sweep := func() error {
		if len(batch) == 0 {
			return nil
		}
		s.gate.mu.Lock()
		defer s.gate.mu.Unlock()
		wb := s.db.NewWriteBatch()
		defer wb.Cancel()
		var swept []candidate
		for _, c := range batch {
			if s.gate.protectedLocked(c.h) {
				st.KeptInFlight++
				continue
			}
			if err := wb.Delete(blockKey(c.h)); err != nil {
				return err
			}
			swept = append(swept, c)
		}
		if err := wb.Flush(); err != nil {
			return err
		}
		for _, c := range swept {
			s.cache.drop(c.h)
			st.FreedBlocks++
			st.FreedBytes += c.size
		}
		batch = batch[:0]
		return nil
	}
	err = eachBlock(ctx, snapshot, func(h Hash, size int64) error {
		st.Candidates++
		if marked.has(h) {
			return nil
		}
		batch = append(batch, candidate{h, size})
		if len(batch) < sweepBatch {
			return nil
		}
		if err := sweep(); err != nil {
			return fmt.Errorf("gc sweep: %w", err)
		}
		return nil
	})
	if err == nil {
		if err = sweep(); err != nil {
			err = fmt.Errorf("gc sweep: %w", err)
		}
	}
	snapshot.Discard() // before value-log GC, which must not keep its versions
	if err != nil {
		return st, err
	}
	for _, id := range orphans {
		s.mu.Lock()
		_, pending := s.pending[id]
		s.mu.Unlock()
		if pending {
			continue
		}
		if err := s.PurgeSegments(ctx, id); err == nil {
			st.OrphanSegments++
		}
	}
	if err := s.db.Sync(); err != nil {
		return st, err
	}
	// Give the space back: rewrite value-log files that are mostly garbage.
	for st.VlogRewrites < 1000 && ctx.Err() == nil {
		if err := s.db.RunValueLogGC(0.3); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				return st, fmt.Errorf("value log gc: %w", err)
			}
			break
		}
		st.VlogRewrites++
	}
	st.DiskAfter, _ = s.DiskUsage()
	st.Duration = time.Since(start)
	return st, nil
}

// eachBlock calls fn with every stored block's hash and stored size in
// txn's snapshot, in key order, until fn or ctx fails.
func eachBlock(ctx context.Context, txn *badger.Txn, fn func(h Hash, size int64) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixBlock)})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		var h Hash
		copy(h[:], it.Item().Key()[len(prefixBlock):])
		if err := fn(h, it.Item().ValueSize()); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// countBlocks counts the stored blocks in txn's snapshot.
func countBlocks(ctx context.Context, txn *badger.Txn) (int, error) {
	n := 0
	err := eachBlock(ctx, txn, func(Hash, int64) error { n++; return nil })
	return n, err
}

// markSet holds blocks by the first 16 bytes of their hash: half the
// memory of whole hashes. Two blocks sharing a prefix (a 2^-128 chance
// per pair) only make GC keep a garbage block, never sweep a live one;
// in scrub's set of present blocks, it could hide one missing block
// behind another at the same odds.
type markSet map[[16]byte]struct{}

func (m markSet) add(h Hash) { m[[16]byte(h[:16])] = struct{}{} }

func (m markSet) has(h Hash) bool {
	_, ok := m[[16]byte(h[:16])]
	return ok
}

// mark returns every hash named by a committed or pending map, and the
// ids of maps that have segments but no header.
func (s *Store) mark(ctx context.Context) (markSet, []MapID, error) {
	// Not presized: the stored-block count would also count the garbage,
	// and a set grown on demand holds ~36 B per live block (~56 at the
	// peak of a growth step; BenchmarkMarkSetMemory).
	marked := markSet{}
	var orphans []MapID
	err := s.db.View(func(txn *badger.Txn) error {
		live := map[MapID]bool{}
		isLive := func(id MapID) bool {
			if v, ok := live[id]; ok {
				return v
			}
			s.mu.Lock()
			_, pending := s.pending[id]
			s.mu.Unlock()
			_, err := txn.Get(mapKey(id))
			v := pending || err == nil
			live[id] = v
			return v
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixSegment), PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		var last MapID
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := it.Item().Key()
			var id MapID
			copy(id[:], k[len(prefixSegment):])
			if !isLive(id) {
				if !bytes.Equal(id[:], last[:]) {
					orphans = append(orphans, id)
					last = id
				}
				continue
			}
			err := it.Item().Value(func(v []byte) error {
				hs, err := DecodeSegment(v)
				if err != nil {
					return fmt.Errorf("map %s: %w", id, err)
				}
				for _, h := range hs {
					if !h.IsZero() {
						marked.add(h)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return marked, orphans, err
}
