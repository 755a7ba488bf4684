package blockstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// RebuildStats reports one RebuildIndex.
type RebuildStats struct {
	PacksListed     int64 `json:"packs_listed"`
	PacksAdded      int64 `json:"packs_added"`   // put back into the pack table
	PacksInFlight   int64 `json:"packs_skipped"` // being written by a backup now; it indexes them itself
	PacksMissing    int64 `json:"packs_missing"` // in the pack table but not in the pack store
	BlocksListed    int64 `json:"blocks_listed"`
	BlocksAdded     int64 `json:"blocks_added"`     // index entries that were missing
	BlocksRepointed int64 `json:"blocks_repointed"` // entries that pointed into a missing pack
	BlocksKept      int64 `json:"blocks_kept"`      // already indexed (in this or another pack)
	// BlocksLeftOut are absent from the index although their pack is in
	// the table: GC swept them as garbage, or scrub removed them as
	// damaged. They stay out.
	BlocksLeftOut int64  `json:"blocks_left_out"`
	NextPack      uint64 `json:"next_pack"` // first pack number new packs get
	// Unreadable lists packs whose footer could not be read or failed its
	// checksum (one line each); their blocks were not indexed.
	Unreadable []string      `json:"packs_unreadable"`
	Duration   time.Duration `json:"duration"`
}

// Packs returns the store's PackStore (tests and tools that inspect
// where block bytes live).
func (s *Store) Packs() PackStore { return s.packs }

// rebuildWorkers is how many pack footers are read at once: the reads
// are small and an object store answers each after a round trip.
const rebuildWorkers = 8

// RebuildIndex rebuilds the index (i/ entries) and the pack table (p/
// entries) from the footers of the packs the pack store holds: the
// recovery for an index that lost entries (a Badger directory restored
// from an older copy, entries removed by a scrub that could not reach the
// store) and the way to adopt packs left in a bucket.
//
// It only adds: packs outside the pack table are adopted with every block
// the index lacks; an entry that exists is kept, unless it points into a
// pack the store no longer holds and a listed pack has a copy that
// verifies, in which case it is pointed at that copy. Blocks of packs
// already in the table that the index lacks stay out (GC swept them, or
// scrub removed them as damaged: re-adding them would undo either). It
// never removes an entry, a map or a pack, so it is safe on a store with
// committed backups, and entries it adds for blocks no backup uses are
// garbage that the next GC sweeps. It advances the pack number reservation past every listed pack,
// so new packs never reuse a number the store holds. It runs beside
// backups and restores (packs being written are left to their writer);
// GC waits for it, because GC would delete the packs it is adopting as
// orphans. A pack whose footer is unreadable is reported, not indexed;
// the footers are checksummed, block contents are verified by scrub.
func (s *Store) RebuildIndex(ctx context.Context) (RebuildStats, error) {
	start := time.Now()
	if s.opts.ReadOnly {
		return RebuildStats{}, fmt.Errorf("rebuild index of store %s: opened read-only", s.dir)
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	release, err := s.enter()
	if err != nil {
		return RebuildStats{}, err
	}
	defer release()
	ctx = WithReadHint(ctx, ReadOnce)
	var st RebuildStats

	// Packs allocated before this point and not being written are
	// indexed, so they are in the listing below unless the store lost
	// them; later ones are not judged missing.
	s.mu.Lock()
	writingAtStart := maps.Clone(s.writing)
	nextAtStart := s.nextPack
	s.mu.Unlock()

	type listed struct {
		num  uint64
		size int64
	}
	var packs []listed
	inStore := map[uint64]bool{}
	err = s.packs.List(ctx, func(num uint64, size int64) error {
		packs = append(packs, listed{num, size})
		inStore[num] = true
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("rebuild index: list packs: %w", err)
	}
	st.PacksListed = int64(len(packs))
	slices.SortFunc(packs, func(a, b listed) int {
		switch {
		case a.num < b.num:
			return -1
		case a.num > b.num:
			return 1
		}
		return 0
	})
	if len(packs) > 0 {
		if err := s.reservePacksAbove(packs[len(packs)-1].num); err != nil {
			return st, fmt.Errorf("rebuild index: %w", err)
		}
	}
	missing := func(num uint64) bool {
		_, busy := writingAtStart[num]
		return num < nextAtStart && !busy && !inStore[num]
	}

	table := map[uint64]bool{}
	err = s.db.View(func(txn *badger.Txn) error {
		pis, err := packTable(ctx, txn)
		for _, pi := range pis {
			table[pi.Num] = true
			if missing(pi.Num) {
				st.PacksMissing++
			}
		}
		return err
	})
	if err != nil {
		return st, fmt.Errorf("rebuild index: read the pack table: %w", err)
	}

	type footer struct {
		pack    listed
		entries []packEntry
		err     error
	}
	work := make(chan listed)
	results := make(chan footer)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range rebuildWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				es, err := s.readPackFooter(wctx, p.num, p.size)
				select {
				case results <- footer{p, es, err}:
				case <-wctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		defer close(work)
		for _, p := range packs {
			select {
			case work <- p:
			case <-wctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()

	var firstErr error
	for f := range results {
		if firstErr != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			firstErr = err
			cancel()
			continue
		}
		s.mu.Lock()
		_, busy := s.writing[f.pack.num]
		s.mu.Unlock()
		switch {
		case busy:
			st.PacksInFlight++
			continue
		case errors.Is(f.err, ErrPackNotFound):
			continue // deleted since the listing (GC waits, so by hand)
		case f.err != nil:
			st.Unreadable = append(st.Unreadable, f.err.Error())
			continue
		}
		st.BlocksListed += int64(len(f.entries))
		if err := s.adoptPack(ctx, f.pack.num, f.pack.size, f.entries, table[f.pack.num], missing, &st); err != nil {
			firstErr = fmt.Errorf("rebuild index: pack %016x: %w", f.pack.num, err)
			cancel()
		}
	}
	if firstErr != nil {
		return st, firstErr
	}
	if err := s.db.Sync(); err != nil {
		return st, fmt.Errorf("rebuild index: sync: %w", err)
	}
	s.mu.Lock()
	st.NextPack = s.nextPack
	s.mu.Unlock()
	st.Duration = time.Since(start)
	return st, nil
}

// adoptPack indexes the blocks of one pack. For a pack outside the
// table (adopted), every block the index lacks is added, and the pack
// goes into the table in the same transaction as its first entries:
// scrub judges an entry that points into a pack outside the table
// damaged. For a pack in the table, blocks the index lacks are left out:
// GC swept them as garbage or scrub removed them as damaged. For both,
// an entry that points into a missing pack is pointed at this copy once
// the copy verifies.
func (s *Store) adoptPack(ctx context.Context, num uint64, size int64, entries []packEntry, inTable bool, missing func(uint64) bool, st *RebuildStats) error {
	type repoint struct {
		e   packEntry
		old location
	}
	var adds []packEntry
	var repoints []repoint
	err := s.db.View(func(txn *badger.Txn) error {
		for _, e := range entries {
			cur, err := s.lookupTxn(txn, e.h)
			switch {
			case errors.Is(err, errNotIndexed) && inTable:
				st.BlocksLeftOut++
			case errors.Is(err, errNotIndexed):
				adds = append(adds, e)
			case err != nil:
				return err
			case cur != e.loc && missing(cur.pack):
				repoints = append(repoints, repoint{e, cur})
			default:
				st.BlocksKept++
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	verified := repoints[:0]
	for _, r := range repoints {
		v := make([]byte, r.e.loc.len)
		if _, err := s.packs.ReadAt(ctx, num, v, int64(r.e.loc.off)); err != nil {
			return fmt.Errorf("read block %s: %w", r.e.h, err)
		}
		if _, err := s.decodeVerify(r.e.h, v, make([]byte, 0, s.blockSize)); err != nil {
			st.BlocksKept++ // this copy is damaged too; the entry stays for scrub to judge
			continue
		}
		verified = append(verified, r)
	}
	pi := packInfo{Num: num, Size: size, Blocks: uint32(len(entries)), Created: time.Now().UTC()}
	addTable := !inTable
	write := func(fn func(txn *badger.Txn) error) error {
		return s.updateRetry(func(txn *badger.Txn) error {
			if addTable {
				if err := txn.Set(packKey(num), pi.encode()); err != nil {
					return err
				}
			}
			return fn(txn)
		})
	}
	for i := 0; i < len(adds) || (i == 0 && addTable); i += sweepBatch {
		chunk := adds[i:min(i+sweepBatch, len(adds))]
		var n int64
		err := write(func(txn *badger.Txn) error {
			n = 0
			for _, e := range chunk {
				// Re-checked: a backup may have stored the block meanwhile.
				if _, err := s.lookupTxn(txn, e.h); !errors.Is(err, errNotIndexed) {
					if err != nil {
						return err
					}
					continue
				}
				if err := txn.Set(indexKey(e.h), e.loc.encode()); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if addTable {
			st.PacksAdded++
			addTable = false
		}
		st.BlocksAdded += n
		st.BlocksKept += int64(len(chunk)) - n
	}
	for i := 0; i < len(verified); i += sweepBatch {
		chunk := verified[i:min(i+sweepBatch, len(verified))]
		var n int64
		err := write(func(txn *badger.Txn) error {
			n = 0
			for _, r := range chunk {
				cur, err := s.lookupTxn(txn, r.e.h)
				if err != nil && !errors.Is(err, errNotIndexed) {
					return err
				}
				if err == nil && cur != r.old {
					continue // changed meanwhile
				}
				if err := txn.Set(indexKey(r.e.h), r.e.loc.encode()); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		st.BlocksRepointed += n
		st.BlocksKept += int64(len(chunk)) - n
	}
	return nil
}

// reservePacksAbove makes every pack number up to top used: a new pack
// gets a higher number, also after a restart.
func (s *Store) reservePacksAbove(top uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if top < s.nextPack {
		return nil
	}
	s.nextPack = top + 1
	if s.nextPack < s.packLimit {
		return nil
	}
	limit := s.nextPack + packSeqStep
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(keyMetaPackSeq, binary.BigEndian.AppendUint64(nil, limit))
	})
	if err == nil {
		err = s.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("reserve pack numbers above %016x: %w", top, err)
	}
	s.packLimit = limit
	return nil
}
