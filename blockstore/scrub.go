package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"time"
)

// ScrubReport lists what a scrub found.
type ScrubReport struct {
	Packs  int64 `json:"packs_checked"`
	Blocks int64 `json:"blocks_checked"`
	Bytes  int64 `json:"stored_bytes_checked"`
	// Damaged blocks failed verification (or their pack is gone) and were
	// removed from the index, so that the next backup holding the same
	// content stores it again (repair).
	Damaged []Hash `json:"damaged_blocks"`
	// DamagedMaps refer to a block that is damaged or missing, or their
	// map file is damaged.
	DamagedMaps []MapID       `json:"damaged_maps"`
	Duration    time.Duration `json:"duration"`
}

// Scrub re-reads and re-hashes every live block (bypassing the cache),
// pack by pack in storage order with Options.Workers packs at a time,
// removes the damaged ones from the index, and reports every committed
// map that refers to a damaged or missing block. It runs beside backups
// and GC: blocks are judged from a snapshot, and maps are judged against
// the index as it is after the damaged blocks are removed, so a backup
// committed meanwhile is never reported damaged for blocks it added.
// progress gets stored bytes done and total.
func (s *Store) Scrub(ctx context.Context, progress func(done, total int64)) (ScrubReport, error) {
	start := time.Now()
	ctx = WithReadHint(ctx, ReadOnce)
	s.scrubMu.Lock()
	defer s.scrubMu.Unlock()
	release, err := s.enter()
	if err != nil {
		return ScrubReport{}, err
	}
	defer release()
	var rep ScrubReport

	snap := s.takeSnapshot(false)
	s.hook(HookScrubSnapshot)
	damaged, err := s.verifyPacks(ctx, snap, &rep, progress)
	snap.txn.Discard()
	if err != nil {
		return rep, err
	}
	s.hook(HookScrubVerified)
	var removed []Hash
	s.removeMu.Lock()
	for _, e := range damaged {
		ok, err := s.deleteIndexIf(e.h, e.loc)
		if err != nil {
			s.recordDamage(removed)
			s.removeMu.Unlock()
			return rep, fmt.Errorf("remove damaged block %s: %w", e.h, err)
		}
		if ok {
			s.cache.drop(e.h)
			removed = append(removed, e.h)
		}
	}
	s.recordDamage(removed)
	s.removeMu.Unlock()
	rep.Damaged = removed

	s.hook(HookScrubMaps)
	rep.DamagedMaps, err = s.damagedMaps(ctx, removed)
	if err != nil {
		return rep, err
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// verifyPacks checks every block the snapshot's index points at and
// returns the damaged ones.
func (s *Store) verifyPacks(ctx context.Context, snap *snapshot, rep *ScrubReport, progress func(done, total int64)) ([]packEntry, error) {
	table, err := packTable(ctx, snap.txn)
	if err != nil {
		return nil, err
	}
	// How many entries of the snapshot point into each pack, and the
	// entries that point nowhere.
	expect := map[uint64]int64{}
	known := make(map[uint64]int64, len(table))
	var total int64
	for _, pi := range table {
		known[pi.Num] = pi.Size
		total += pi.Size
	}
	var damaged []packEntry
	err = eachIndexEntry(ctx, snap.txn, func(h Hash, loc location) error {
		if size, ok := known[loc.pack]; !ok || int64(loc.off)+int64(loc.len) > size {
			if _, busy := snap.writing[loc.pack]; !busy {
				damaged = append(damaged, packEntry{h, loc})
			}
			return nil
		}
		expect[loc.pack]++
		return nil
	})
	if err != nil {
		return nil, err
	}

	type packResult struct {
		pi       packInfo
		damaged  []packEntry
		verified []Hash // kept only when fewer entries verified than expected
		blocks   int64
		bytes    int64
		gone     bool
		err      error
	}
	work := make(chan packInfo)
	results := make(chan packResult)
	var wg sync.WaitGroup
	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pi := range work {
				r := packResult{pi: pi}
				r.damaged, r.verified, r.bytes, r.gone, r.err = s.verifyPack(ctx, pi)
				r.blocks = int64(len(r.verified))
				if r.err == nil && !r.gone && r.blocks == expect[pi.Num] {
					r.verified = nil
				}
				results <- r
			}
		}()
	}
	go func() {
		defer close(work)
		for _, pi := range table {
			select {
			case work <- pi:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()

	// Packs where fewer blocks verified than the snapshot expected: GC
	// moved some meanwhile, or the footer does not list them. Those
	// entries are checked one by one below.
	recheck := map[uint64]map[Hash]struct{}{}
	var done int64
	var firstErr error
	for r := range results {
		if r.err != nil {
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		rep.Packs++
		rep.Blocks += r.blocks
		rep.Bytes += r.bytes
		damaged = append(damaged, r.damaged...)
		if r.gone || r.verified != nil {
			set := map[Hash]struct{}{}
			for _, h := range r.verified {
				set[h] = struct{}{}
			}
			recheck[r.pi.Num] = set
		}
		done += r.pi.Size
		if progress != nil {
			progress(done, total)
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(recheck) > 0 {
		err := eachIndexEntry(ctx, snap.txn, func(h Hash, loc location) error {
			set, ok := recheck[loc.pack]
			if !ok {
				return nil
			}
			if _, ok := set[h]; ok {
				return nil
			}
			cur, err := s.lookup(h)
			if errors.Is(err, errNotIndexed) || (err == nil && cur != loc) {
				return nil // removed or moved since the snapshot
			}
			if err != nil {
				return err
			}
			rep.Blocks++
			if _, err := s.readAt(ctx, h, loc, nil); err != nil {
				if !IsDataError(err) && !errors.Is(err, ErrPackNotFound) {
					return err
				}
				damaged = append(damaged, packEntry{h, loc})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if progress != nil {
		progress(total, total)
	}
	return damaged, nil
}

// verifyPack reads one pack front to back and verifies every record the
// index still points at. gone reports a pack deleted since the snapshot.
func (s *Store) verifyPack(ctx context.Context, pi packInfo) (damaged []packEntry, verified []Hash, bytes int64, gone bool, err error) {
	entries, err := s.readPackFooter(ctx, pi.Num, pi.Size)
	if errors.Is(err, ErrPackNotFound) {
		return nil, nil, 0, true, nil
	}
	if err != nil {
		// An unreadable footer: every entry pointing here is checked one
		// by one (recheck), which finds the damage.
		return nil, nil, 0, true, nil
	}
	slices.SortFunc(entries, func(a, b packEntry) int { return int(int64(a.loc.off) - int64(b.loc.off)) })
	r := s.newPackReader(ctx, pi.Num, pi.Size)
	dst := make([]byte, 0, s.blockSize)
	// One view per pack, taken after the snapshot: an entry GC removed or
	// moved since is not verified here (recheck accounts for it).
	txn := s.db.NewTransaction(false)
	defer txn.Discard()
	for _, e := range entries {
		cur, err := s.lookupTxn(txn, e.h)
		if errors.Is(err, errNotIndexed) || (err == nil && cur != e.loc) {
			continue
		}
		if err != nil {
			return nil, nil, 0, false, err
		}
		v, err := r.slice(int64(e.loc.off), int(e.loc.len))
		if errors.Is(err, ErrPackNotFound) {
			return nil, nil, 0, true, nil
		}
		if err != nil {
			return nil, nil, 0, false, err
		}
		bytes += int64(len(v))
		verified = append(verified, e.h)
		if _, err := s.decodeVerify(e.h, v, dst); err != nil {
			damaged = append(damaged, e)
		}
	}
	return damaged, verified, bytes, false, nil
}

// damagedMaps returns the committed maps that refer to a block missing
// from the index (removed by this scrub, checked exactly, or missing
// otherwise, checked through a Bloom filter of the index), or whose map
// file is damaged. It reads a fresh view: every map committed in it had
// all its blocks indexed before its commit.
func (s *Store) damagedMaps(ctx context.Context, removed []Hash) ([]MapID, error) {
	snap := s.takeSnapshot(false)
	defer snap.txn.Discard()
	table, err := packTable(ctx, snap.txn)
	if err != nil {
		return nil, err
	}
	var n int64
	for _, pi := range table {
		n += int64(pi.Blocks)
	}
	present := newBloom(n)
	err = eachIndexEntry(ctx, snap.txn, func(h Hash, _ location) error {
		present.add(h)
		return nil
	})
	if err != nil {
		return nil, err
	}
	gone := make(map[Hash]struct{}, len(removed))
	for _, h := range removed {
		gone[h] = struct{}{}
	}
	var out []MapID
	err = eachMapInfo(ctx, snap.txn, func(info MapInfo) error {
		if info.Staged {
			return nil // an import lacks blocks until it finishes
		}
		err := s.eachMapSegment(ctx, info.ID, &info, nil, func(_ int64, hs []Hash) error {
			for _, h := range hs {
				if h.IsZero() {
					continue
				}
				if _, bad := gone[h]; bad || !present.has(h) {
					return errStop
				}
			}
			return nil
		})
		switch {
		case err == nil:
		case errors.Is(err, errStop), IsDataError(err):
			out = append(out, info.ID)
		case errors.Is(err, fs.ErrNotExist):
			if still, herr := s.mapCommitted(info.ID); herr != nil {
				return herr
			} else if still {
				out = append(out, info.ID)
			}
		default:
			return err
		}
		return nil
	})
	return out, err
}

// Stats describe the whole store.
type Stats struct {
	BlockSize   int   `json:"block_size"`
	Blocks      int64 `json:"blocks"`
	RawBytes    int64 `json:"unique_bytes"` // blocks × block size
	StoredBytes int64 `json:"stored_bytes"` // live blocks after compression
	Packs       int64 `json:"packs"`
	PackBytes   int64 `json:"pack_bytes"` // every pack's size, garbage included
	DiskBytes   int64 `json:"disk_bytes"` // allocated bytes of the store's files
	Maps        int   `json:"maps"`
}

// Stats counts blocks, packs and bytes.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	release, err := s.enter()
	if err != nil {
		return Stats{}, err
	}
	defer release()
	st := Stats{BlockSize: s.blockSize}
	snap := s.takeSnapshot(false)
	defer snap.txn.Discard()
	err = eachIndexEntry(ctx, snap.txn, func(_ Hash, loc location) error {
		st.Blocks++
		st.StoredBytes += int64(loc.len)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("count stored blocks: %w", err)
	}
	table, err := packTable(ctx, snap.txn)
	if err != nil {
		return st, fmt.Errorf("count packs: %w", err)
	}
	for _, pi := range table {
		st.Packs++
		st.PackBytes += pi.Size
	}
	err = eachMapInfo(ctx, snap.txn, func(info MapInfo) error {
		if !info.Staged {
			st.Maps++
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	st.RawBytes = st.Blocks * int64(s.blockSize)
	st.DiskBytes, _ = s.DiskUsage()
	return st, nil
}
