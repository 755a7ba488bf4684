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
	PacksListed     int64  `json:"packs_listed"`
	PacksAdded      int64  `json:"packs_added"`   // put back into the pack table
	PacksInFlight   int64  `json:"packs_skipped"` // being written by a backup now; it indexes them itself
	PacksMissing    int64  `json:"packs_missing"` // in the pack table but not in the pack store
	BlocksListed    int64  `json:"blocks_listed"`
	BlocksAdded     int64  `json:"blocks_added"`     // index entries that were missing
	BlocksRepointed int64  `json:"blocks_repointed"` // entries that pointed into a missing pack
	BlocksKept      int64  `json:"blocks_kept"`      // already indexed (in this or another pack)
	NextPack        uint64 `json:"next_pack"`        // first pack number new packs get
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
// It only adds: an entry that exists is kept, unless it points into a
// pack the store no longer holds and a listed pack has the block, in
// which case it is pointed at that copy. It never removes an entry, a map
// or a pack, so it is safe on a store with committed backups, and
// entries it adds for blocks no backup uses are garbage that the next GC
// sweeps. It advances the pack number reservation past every listed pack,
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
		if err := s.adoptPack(f.pack.num, f.pack.size, f.entries, !table[f.pack.num], missing, &st); err != nil {
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

// adoptPack indexes the blocks of one pack that the index lacks (or finds
// only in a missing pack), and puts the pack into the table in the same
// transaction as its first entries: scrub judges an entry that points
// into a pack outside the table damaged.
func (s *Store) adoptPack(num uint64, size int64, entries []packEntry, addToTable bool, missing func(uint64) bool, st *RebuildStats) error {
	pi := packInfo{Num: num, Size: size, Blocks: uint32(len(entries)), Created: time.Now().UTC()}
	if len(entries) == 0 && addToTable {
		if err := s.updateRetry(func(txn *badger.Txn) error { return txn.Set(packKey(num), pi.encode()) }); err != nil {
			return err
		}
		st.PacksAdded++
		return nil
	}
	for i := 0; i < len(entries); i += sweepBatch {
		chunk := entries[i:min(i+sweepBatch, len(entries))]
		first := i == 0
		var added, repointed, kept int64
		err := s.updateRetry(func(txn *badger.Txn) error {
			added, repointed, kept = 0, 0, 0
			if first && addToTable {
				if err := txn.Set(packKey(num), pi.encode()); err != nil {
					return err
				}
			}
			for _, e := range chunk {
				cur, err := s.lookupTxn(txn, e.h)
				switch {
				case errors.Is(err, errNotIndexed):
					added++
				case err != nil:
					return err
				case cur != e.loc && missing(cur.pack):
					repointed++
				default:
					kept++
					continue
				}
				if err := txn.Set(indexKey(e.h), e.loc.encode()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		st.BlocksAdded += added
		st.BlocksRepointed += repointed
		st.BlocksKept += kept
	}
	if addToTable {
		st.PacksAdded++
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
