package blockstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// GCStats reports one garbage collection.
type GCStats struct {
	Candidates    int64         `json:"blocks_examined"`
	Marked        int64         `json:"blocks_live"`
	FreedBlocks   int64         `json:"blocks_freed"`
	FreedBytes    int64         `json:"bytes_freed"` // stored (compressed) bytes of the swept blocks
	KeptInFlight  int64         `json:"blocks_kept_for_backups_in_progress"`
	PacksDeleted  int64         `json:"packs_deleted"`
	PacksRepacked int64         `json:"packs_repacked"`
	RepackSkipped int64         `json:"packs_not_repacked_for_lack_of_space,omitempty"`
	BytesRepacked int64         `json:"bytes_repacked"` // live bytes copied out of repacked packs
	OrphanPacks   int64         `json:"orphan_packs_deleted"`
	OrphanMaps    int64         `json:"orphan_maps_deleted"`
	MarkBytes     int64         `json:"mark_set_bytes"`    // memory of the mark set
	DiskBefore    int64         `json:"disk_bytes_before"` // allocated bytes of the store's files
	DiskAfter     int64         `json:"disk_bytes_after"`
	Duration      time.Duration `json:"duration"`
}

const sweepBatch = 1000

// snapshot is the consistent view GC and scrub work from: one Badger read
// transaction, the maps being written and the packs not yet indexed, all
// taken under Store.mu. Commit moves a map from pending to committed and
// a pack leaves writing only after its blocks are indexed, both under the
// same lock, so every map is in exactly one of the view's headers, the
// pending set, or (created later) the GC gate's holds; and every pack
// numbered up to maxPack is either in the view's pack table or in writing.
type snapshot struct {
	txn       *badger.Txn
	pending   map[MapID]*mapWriter
	importing map[MapID]*mapWriter
	writing   map[uint64]struct{}
	maxPack   uint64
}

// takeSnapshot fixes a snapshot. With gate set it also turns the GC gate
// on in the same critical section, so that every hold released from now
// on is remembered.
func (s *Store) takeSnapshot(gate bool) *snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gate {
		s.gate.mu.Lock()
		s.gate.gcOn = true
		s.gate.touched = map[Hash]struct{}{}
		s.gate.mu.Unlock()
	}
	return &snapshot{
		txn:       s.db.NewTransaction(false),
		pending:   maps.Clone(s.pending),
		importing: maps.Clone(s.importing),
		writing:   maps.Clone(s.writing),
		maxPack:   s.nextPack - 1,
	}
}

// GC frees what no backup needs: index entries of blocks no live map
// refers to, packs that hold no live block (deleted), packs whose live
// share fell below Options.RepackBelow (live blocks copied to a new pack,
// then deleted), and packs and map files left by crashed ingests. The
// space goes back to the file system when GC returns. It runs while
// backups, exports and restores go on.
//
// Why it never frees a block in use:
//
//   - Maps committed before the snapshot are read from their files; a
//     map deleted later only loses protection it no longer needs.
//   - Maps being written at the snapshot (pending) are read from their
//     files too, under their writer's lock; Commit makes a map visible and
//     drops it from pending in one critical section under Store.mu, where
//     the snapshot is also taken, so no map is missed between the two.
//   - Maps started after the snapshot: every hash an ingest refers to is
//     held in the gate from before its index lookup until the segment
//     naming it is in the map file, and hashes released while GC runs are
//     remembered (gcGate). Sweep removes an index entry only under the
//     gate's lock after checking the hash is neither held nor released
//     during the run: either the hold came first (kept) or the removal did
//     (the ingest's lookup misses and it stores the block again).
//   - Candidates are index entries of the snapshot. Blocks indexed later
//     are in packs written after it (in writing at the snapshot, or
//     numbered above maxPack), which GC does not touch.
//   - A pack is deleted only when no entry of the snapshot points into it
//     and it was complete before the snapshot; no later entry can point
//     into it (ingests index new packs, repack writes a new pack).
//   - Repack points a block at its new copy only if the index still
//     points at the old one, syncs the index, then deletes the old pack;
//     a reader that finds its pack gone looks the block up again.
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

	snap := s.takeSnapshot(true)
	defer func() {
		snap.txn.Discard()
		s.gate.mu.Lock()
		s.gate.gcOn = false
		s.gate.touched = nil
		s.gate.mu.Unlock()
	}()
	s.hook(HookGCSnapshot)
	table, err := packTable(ctx, snap.txn)
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	// The mark set is sized by the blocks that can be marked: those in
	// packs (garbage included) and those of maps being written.
	var n int64
	for _, pi := range table {
		n += int64(pi.Blocks)
	}
	for _, mw := range snap.pending {
		n += mw.nblocks
	}
	marked := newBloom(n)
	st.MarkBytes = marked.bytes()
	committed, err := s.mark(ctx, snap, marked)
	if err != nil {
		return st, fmt.Errorf("gc mark: %w", err)
	}
	s.hook(HookGCMarked)

	live, err := s.sweep(ctx, snap, marked, &st)
	if err != nil {
		return st, fmt.Errorf("gc sweep: %w", err)
	}
	marked = nil
	s.hook(HookGCSwept)
	var repack []packInfo
	inTable := make(map[uint64]struct{}, len(table))
	for _, pi := range table {
		inTable[pi.Num] = struct{}{}
		if _, busy := snap.writing[pi.Num]; busy {
			continue
		}
		switch lb := live[pi.Num]; {
		case lb == 0:
			s.hook(HookGCDeletePack)
			if err := s.deletePack(ctx, pi.Num); err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			st.PacksDeleted++
		case float64(lb) < s.opts.RepackBelow*float64(pi.Size):
			repack = append(repack, pi)
		}
	}
	if err := s.repack(ctx, repack, &st); err != nil {
		return st, fmt.Errorf("gc repack: %w", err)
	}

	s.hook(HookGCOrphans)
	err = s.packs.List(ctx, func(num uint64, _ int64) error {
		_, known := inTable[num]
		_, busy := snap.writing[num]
		if known || busy || num > snap.maxPack || live[num] > 0 {
			return nil
		}
		if err := s.packs.Delete(ctx, num); err != nil {
			return err
		}
		st.OrphanPacks++
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("gc orphan packs: %w", err)
	}
	st.OrphanMaps, err = s.removeOrphanMaps(committed)
	if err != nil {
		return st, fmt.Errorf("gc orphan maps: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return st, fmt.Errorf("gc: sync index: %w", err)
	}
	st.DiskAfter, _ = s.DiskUsage()
	st.Duration = time.Since(start)
	return st, nil
}

// mark adds every hash named by a map committed or pending at the
// snapshot to marked, and returns the ids of the committed ones.
func (s *Store) mark(ctx context.Context, snap *snapshot, marked *bloom) (map[MapID]struct{}, error) {
	add := func(_ int64, hs []Hash) error {
		for _, h := range hs {
			if !h.IsZero() {
				marked.add(h)
			}
		}
		return nil
	}
	committed := map[MapID]struct{}{}
	err := eachMapInfo(ctx, snap.txn, func(info MapInfo) error {
		committed[info.ID] = struct{}{}
		s.hook(HookGCMarkMap)
		if info.Staged {
			// An import: its file grows under its writer's lock, slots not
			// yet written are holes, and one a crash tore is skipped (the
			// import writes it again and fetches what GC took).
			err := s.eachMapSegment(ctx, info.ID, nil, snap.importing[info.ID], add)
			var bad *CorruptMapError
			if errors.Is(err, fs.ErrNotExist) || errors.As(err, &bad) {
				return nil
			}
			return err
		}
		err := s.eachMapSegment(ctx, info.ID, &info, nil, add)
		if errors.Is(err, fs.ErrNotExist) {
			if still, herr := s.mapCommitted(info.ID); herr != nil || still {
				return errors.Join(&CorruptMapError{Map: info.ID, Segment: -1, Reason: "map file is missing"}, herr)
			}
			return nil // deleted since the snapshot
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	for id, mw := range snap.pending {
		s.hook(HookGCMarkMap)
		err := s.eachMapSegment(ctx, id, nil, mw, add)
		if errors.Is(err, fs.ErrNotExist) {
			continue // aborted, or committed and deleted since
		}
		if err != nil {
			return nil, err
		}
	}
	return committed, nil
}

// mapCommitted reports whether map id has a header now.
func (s *Store) mapCommitted(id MapID) (bool, error) {
	_, err := s.MapInfo(id)
	if errors.Is(err, ErrMapNotFound) {
		return false, nil
	}
	return err == nil, err
}

// recordBytes is what one block takes in its pack.
func recordBytes(loc location) int64 {
	return packRecordHeader + int64(loc.len) + packFooterEntry
}

// sweep removes the index entries of the snapshot that are neither
// marked nor protected by the gate, and returns the live bytes per pack.
func (s *Store) sweep(ctx context.Context, snap *snapshot, marked *bloom, st *GCStats) (map[uint64]int64, error) {
	live := map[uint64]int64{}
	type candidate struct {
		h   Hash
		loc location
	}
	var batch []candidate
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		s.hook(HookGCSweepBatch)
		if err := s.checkReserve(0, s.gcReserve()); err != nil {
			return err
		}
		s.gate.mu.Lock()
		defer s.gate.mu.Unlock()
		wb := s.db.NewWriteBatch()
		defer wb.Cancel()
		var swept []candidate
		for _, c := range batch {
			if s.gate.protectedLocked(c.h) {
				st.KeptInFlight++
				live[c.loc.pack] += recordBytes(c.loc)
				continue
			}
			if err := wb.Delete(indexKey(c.h)); err != nil {
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
			st.FreedBytes += int64(c.loc.len)
		}
		batch = batch[:0]
		return nil
	}
	err := eachIndexEntry(ctx, snap.txn, func(h Hash, loc location) error {
		st.Candidates++
		if marked.has(h) {
			st.Marked++
			live[loc.pack] += recordBytes(loc)
			return nil
		}
		batch = append(batch, candidate{h, loc})
		if len(batch) < sweepBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	return live, err
}

// deletePack removes a pack from the table, then its bytes. A crash in
// between leaves an orphan file that the next GC deletes.
func (s *Store) deletePack(ctx context.Context, num uint64) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(packKey(num)) }); err != nil {
		return fmt.Errorf("delete pack %016x from the table: %w", num, err)
	}
	return s.packs.Delete(ctx, num)
}

// repack copies the live blocks of packs into new packs, points the index
// at the copies, and deletes the old packs.
func (s *Store) repack(ctx context.Context, packs []packInfo, st *GCStats) error {
	ctx = WithReadHint(ctx, ReadOnce)
	type move struct {
		h        Hash
		from, to location
	}
	var (
		pw      *packWriter
		moves   []move
		sources []uint64 // packs whose every live block is in pw
	)
	defer func() {
		if pw != nil {
			pw.release()
		}
	}()
	flush := func() error {
		if pw != nil {
			pi, err := pw.seal(ctx)
			if err != nil {
				return err
			}
			for i := 0; i < len(moves); i += sweepBatch {
				chunk := moves[i:min(i+sweepBatch, len(moves))]
				first := i == 0
				err := s.updateRetry(func(txn *badger.Txn) error {
					if first {
						if err := txn.Set(packKey(pi.Num), pi.encode()); err != nil {
							return err
						}
					}
					for _, m := range chunk {
						cur, err := s.lookupTxn(txn, m.h)
						if errors.Is(err, errNotIndexed) || (err == nil && cur != m.from) {
							continue // removed or stored again meanwhile: the copy is garbage
						}
						if err != nil {
							return err
						}
						if err := txn.Set(indexKey(m.h), m.to.encode()); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					return fmt.Errorf("index repacked blocks in pack %016x: %w", pi.Num, err)
				}
			}
			pw.release()
			pw = nil
			moves = moves[:0]
		}
		s.hook(HookGCRepackIndexed)
		// The index must point at the copies durably before the old
		// packs go.
		if err := s.db.Sync(); err != nil {
			return fmt.Errorf("sync index: %w", err)
		}
		for _, num := range sources {
			if err := s.deletePack(ctx, num); err != nil {
				return err
			}
		}
		sources = sources[:0]
		return nil
	}
	for _, pi := range packs {
		// Repacking writes before it frees: skip it (the garbage stays
		// until a later GC) rather than eat GC's own reserve.
		if err := s.checkReserve(int64(s.opts.PackSize), s.gcReserve()); err != nil {
			st.RepackSkipped++
			continue
		}
		s.hook(HookGCRepack)
		entries, err := s.readPackFooter(ctx, pi.Num, pi.Size)
		if err != nil {
			return err
		}
		slices.SortFunc(entries, func(a, b packEntry) int { return int(int64(a.loc.off) - int64(b.loc.off)) })
		r := s.newPackReader(ctx, pi.Num, pi.Size)
		clean := true
		for _, e := range entries {
			cur, err := s.lookup(e.h)
			if errors.Is(err, errNotIndexed) || (err == nil && cur != e.loc) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := r.slice(int64(e.loc.off), int(e.loc.len))
			if err != nil {
				return err
			}
			if _, err := s.decodeVerify(e.h, v, make([]byte, 0, s.blockSize)); err != nil {
				clean = false // left for scrub to report; the pack stays
				continue
			}
			if pw == nil {
				if pw, err = s.newPackWriter(); err != nil {
					return err
				}
			}
			to, err := pw.add(e.h, v)
			if err != nil {
				return err
			}
			moves = append(moves, move{e.h, e.loc, to})
			st.BytesRepacked += int64(e.loc.len)
		}
		st.PacksRepacked++
		if clean {
			sources = append(sources, pi.Num)
		}
		if pw != nil && pw.full() {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// updateRetry runs fn in a read-write transaction, retrying on conflicts.
func (s *Store) updateRetry(fn func(txn *badger.Txn) error) error {
	for range 10 {
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return errors.New("too many conflicting writers")
}

// removeOrphanMaps deletes map files that belong to no committed or
// pending map: ingests that died, deletions whose purge did not finish.
// committed are the maps of GC's snapshot; anything else is checked
// against the current state under Store.mu, which Ingest holds while it
// creates a map file and Commit while it publishes one.
func (s *Store) removeOrphanMaps(committed map[MapID]struct{}) (int64, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, mapsDir))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".map")
		if !ok {
			continue
		}
		id, err := ParseMapID(name)
		if err != nil {
			continue
		}
		if _, ok := committed[id]; ok {
			continue
		}
		s.mu.Lock()
		_, pending := s.pending[id]
		_, importing := s.importing[id]
		pending = pending || importing
		still := false
		if !pending {
			_, err = s.mapHeader(id)
			still = err == nil
			if errors.Is(err, ErrMapNotFound) {
				err = nil
			}
		}
		if err == nil && !pending && !still {
			s.removeMapFile(id)
			n++
		}
		s.mu.Unlock()
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// eachIndexEntry calls fn with every index entry of txn's view, in hash
// order, until fn or ctx fails.
func eachIndexEntry(ctx context.Context, txn *badger.Txn, fn func(h Hash, loc location) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixIndex), PrefetchValues: true, PrefetchSize: 256})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		var h Hash
		copy(h[:], it.Item().Key()[len(prefixIndex):])
		var loc location
		err := it.Item().Value(func(v []byte) error {
			var err error
			loc, err = decodeLocation(v)
			return err
		})
		if err != nil {
			return fmt.Errorf("index entry of block %s: %w", h, err)
		}
		if err := fn(h, loc); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// eachMapInfo calls fn with every map header of txn's view.
func eachMapInfo(ctx context.Context, txn *badger.Txn, fn func(MapInfo) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixMap), PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		var id MapID
		copy(id[:], it.Item().Key()[len(prefixMap):])
		info, err := decodeMapInfo(id, it.Item())
		if err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// packTable returns the pack table of txn's view, in pack order.
func packTable(ctx context.Context, txn *badger.Txn) ([]packInfo, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixPack), PrefetchValues: true})
	defer it.Close()
	var out []packInfo
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		k := it.Item().Key()[len(prefixPack):]
		if len(k) != 8 {
			return nil, fmt.Errorf("pack table key %x", k)
		}
		num := binary.BigEndian.Uint64(k)
		var pi packInfo
		err := it.Item().Value(func(v []byte) error {
			var err error
			pi, err = decodePackInfo(num, v)
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, pi)
	}
	return out, nil
}
