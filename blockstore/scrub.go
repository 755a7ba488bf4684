package blockstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// ScrubReport lists what a scrub found.
type ScrubReport struct {
	Blocks int64 `json:"blocks_checked"`
	Bytes  int64 `json:"stored_bytes_checked"`
	// Damaged blocks failed verification and were removed, so that the
	// next backup holding the same content stores it again (repair).
	Damaged []Hash `json:"damaged_blocks"`
	// DamagedMaps refer to a block that is damaged or missing.
	DamagedMaps []MapID       `json:"damaged_maps"`
	Duration    time.Duration `json:"duration"`
}

// Scrub re-reads and re-hashes every stored block (bypassing the cache),
// removes the damaged ones, and reports every committed map that refers
// to a damaged or missing block. progress gets blocks done and total.
func (s *Store) Scrub(ctx context.Context, progress func(done, total int64)) (ScrubReport, error) {
	start := time.Now()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var rep ScrubReport
	snapshot := s.db.NewTransaction(false)
	defer snapshot.Discard()
	total, err := countBlocks(ctx, snapshot)
	if err != nil {
		return rep, err
	}
	// Keyed like GC's mark set (16-byte prefixes): ~36 B per block.
	present := make(markSet, total)
	err = eachBlock(ctx, snapshot, func(h Hash, size int64) error {
		rep.Blocks++
		rep.Bytes += size
		if err := s.VerifyBlock(h); err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			rep.Damaged = append(rep.Damaged, h)
			return nil
		}
		present.add(h)
		if progress != nil && rep.Blocks%256 == 0 {
			progress(rep.Blocks, int64(total))
		}
		return nil
	})
	snapshot.Discard()
	if err != nil {
		return rep, err
	}
	if len(rep.Damaged) > 0 {
		wb := s.db.NewWriteBatch()
		for _, h := range rep.Damaged {
			if err := wb.Delete(blockKey(h)); err != nil {
				wb.Cancel()
				return rep, err
			}
			s.cache.drop(h)
		}
		if err := wb.Flush(); err != nil {
			return rep, fmt.Errorf("remove damaged blocks: %w", err)
		}
	}
	maps, err := s.ListMaps()
	if err != nil {
		return rep, err
	}
	for _, m := range maps {
		damaged := false
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: append([]byte(prefixSegment), m.ID[:]...), PrefetchValues: true})
			defer it.Close()
			for it.Rewind(); it.Valid() && !damaged; it.Next() {
				err := it.Item().Value(func(v []byte) error {
					hs, err := DecodeSegment(v)
					if err != nil {
						damaged = true
						return nil
					}
					for _, h := range hs {
						if !h.IsZero() && !present.has(h) {
							damaged = true
							break
						}
					}
					return nil
				})
				if err != nil {
					damaged = true
				}
			}
			return nil
		})
		if err != nil {
			return rep, err
		}
		if damaged {
			rep.DamagedMaps = append(rep.DamagedMaps, m.ID)
		}
	}
	if progress != nil {
		progress(rep.Blocks, rep.Blocks)
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// Stats describe the whole store.
type Stats struct {
	BlockSize   int   `json:"block_size"`
	Blocks      int64 `json:"blocks"`
	RawBytes    int64 `json:"unique_bytes"` // blocks × block size
	StoredBytes int64 `json:"stored_bytes"` // after compression
	DiskBytes   int64 `json:"disk_bytes"`   // Badger's files
	Maps        int   `json:"maps"`
}

// Stats counts blocks and bytes.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	st := Stats{BlockSize: s.blockSize}
	err := s.db.View(func(txn *badger.Txn) error {
		return eachBlock(ctx, txn, func(_ Hash, size int64) error {
			st.Blocks++
			st.StoredBytes += size
			return nil
		})
	})
	if err != nil {
		return st, fmt.Errorf("count stored blocks: %w", err)
	}
	st.RawBytes = st.Blocks * int64(s.blockSize)
	maps, err := s.ListMaps()
	if err != nil {
		return st, err
	}
	st.Maps = len(maps)
	st.DiskBytes, _ = s.DiskUsage()
	return st, nil
}
