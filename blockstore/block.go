package blockstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// errNotIndexed means the index has no entry for a hash.
var errNotIndexed = errors.New("block not in the index")

// HasBlock reports whether the store holds block h. The zero hash is
// always "held".
func (s *Store) HasBlock(h Hash) (bool, error) {
	if h.IsZero() {
		return true, nil
	}
	_, err := s.lookup(h)
	if errors.Is(err, errNotIndexed) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up block %s: %w", h, err)
	}
	return true, nil
}

// lookup returns where block h lives.
func (s *Store) lookup(h Hash) (location, error) {
	release, err := s.enter()
	if err != nil {
		return location{}, err
	}
	defer release()
	var loc location
	err = s.db.View(func(txn *badger.Txn) error {
		var err error
		loc, err = s.lookupTxn(txn, h)
		return err
	})
	return loc, err
}

func (s *Store) lookupTxn(txn *badger.Txn, h Hash) (location, error) {
	item, err := txn.Get(indexKey(h))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return location{}, errNotIndexed
	}
	if err != nil {
		return location{}, err
	}
	var loc location
	err = item.Value(func(v []byte) error {
		var err error
		loc, err = decodeLocation(v)
		return err
	})
	return loc, err
}

// ReadBlock returns the verified bytes of block h, from the cache or the
// store. The returned slice is shared and must not be modified. A block
// that does not hash to h is a *CorruptBlockError; one that is not in the
// store is a *MissingBlockError (map and index are filled in by the
// caller that knows them).
func (s *Store) ReadBlock(ctx context.Context, h Hash) ([]byte, error) {
	b, _, err := s.readBlock(ctx, h)
	return b, err
}

// readBlock is ReadBlock that also reports whether this call loaded the
// block from its pack (rather than finding it cached, or waiting for
// another reader's load).
func (s *Store) readBlock(ctx context.Context, h Hash) ([]byte, bool, error) {
	release, err := s.enter()
	if err != nil {
		return nil, false, err
	}
	release()
	if h.IsZero() {
		return s.zero, false, nil
	}
	if b, ok := s.cache.get(h); ok {
		return b, false, nil
	}
	return s.cache.fill(ctx, h, func() ([]byte, error) { return s.loadBlock(ctx, h, nil) })
}

// lookupMany finds where each block of hs lives, in one read
// transaction: a request of several blocks pays Badger's per-transaction
// cost (a global lock and its watermark bookkeeping) once. errs[k] is
// errNotIndexed for a hash the index lacks.
func (s *Store) lookupMany(hs []Hash) ([]location, []error) {
	locs, errs := make([]location, len(hs)), make([]error, len(hs))
	release, err := s.enter()
	if err != nil {
		for k := range errs {
			errs[k] = err
		}
		return locs, errs
	}
	defer release()
	err = s.db.View(func(txn *badger.Txn) error {
		for k, h := range hs {
			locs[k], errs[k] = s.lookupTxn(txn, h)
		}
		return nil
	})
	if err != nil {
		for k := range errs {
			errs[k] = err
		}
	}
	return locs, errs
}

// readBlockAt is readBlock for a block already looked up (loc, or the
// lookup's error). A stale location cannot give wrong bytes: packs never
// change and every read is verified; a pack gone meanwhile (GC moved the
// block) or a failed lookup takes the full path, which looks up again.
func (s *Store) readBlockAt(ctx context.Context, h Hash, loc location, lerr error) ([]byte, bool, error) {
	if h.IsZero() {
		return s.zero, false, nil
	}
	if b, ok := s.cache.get(h); ok {
		return b, false, nil
	}
	return s.cache.fill(ctx, h, func() ([]byte, error) {
		if lerr == nil {
			release, err := s.enter()
			if err != nil {
				return nil, err
			}
			b, err := s.readAt(ctx, h, loc, nil)
			release()
			if !errors.Is(err, ErrPackNotFound) {
				return b, err
			}
		}
		return s.loadBlock(ctx, h, nil)
	})
}

// cachedBlock returns block h if the cache holds it (the zero block
// always).
func (s *Store) cachedBlock(h Hash) ([]byte, bool) {
	if h.IsZero() {
		return s.zero, true
	}
	return s.cache.get(h)
}

// loadBlock reads, decodes and verifies a block, bypassing the cache,
// into dst (a new block-sized buffer when dst is nil; else cap(dst) must
// be at least the block size). GC may move a block to another pack
// between the lookup and the read; the old pack is deleted only after the
// index points at the new one, so a read that finds its pack gone looks
// the block up again.
func (s *Store) loadBlock(ctx context.Context, h Hash, dst []byte) ([]byte, error) {
	var lastErr error
	for range 3 {
		loc, err := s.lookup(h)
		if errors.Is(err, errNotIndexed) {
			return nil, &MissingBlockError{Hash: h, Block: -1}
		}
		if err != nil {
			return nil, fmt.Errorf("read block %s: %w", h, err)
		}
		b, err := s.readAt(ctx, h, loc, dst)
		if errors.Is(err, ErrPackNotFound) {
			lastErr = err
			continue
		}
		return b, err
	}
	return nil, &MissingBlockError{Hash: h, Block: -1, Reason: lastErr.Error()}
}

// readAt reads and verifies the value of block h at loc into dst (see
// loadBlock).
func (s *Store) readAt(ctx context.Context, h Hash, loc location, dst []byte) ([]byte, error) {
	release, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	if loc.len == 0 || int64(loc.len) > int64(s.blockSize)+64<<10 {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: fmt.Sprintf("index entry has length %d", loc.len)}
	}
	buf := s.valueBufs.Get().(*[]byte)
	defer s.valueBufs.Put(buf)
	if cap(*buf) < int(loc.len) {
		*buf = make([]byte, loc.len)
	}
	v := (*buf)[:loc.len]
	if _, err := s.packs.ReadAt(ctx, loc.pack, v, int64(loc.off)); err != nil {
		if errors.Is(err, ErrPackNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("read block %s (%s): %w", h, loc, err)
	}
	// The block gets its own buffer (the cache keeps it) unless the
	// caller brought one; the value's buffer goes back to the pool.
	if dst == nil {
		dst = make([]byte, 0, s.blockSize)
	}
	return s.decodeVerify(h, v, dst[:0])
}

// decodeVerify decodes a stored value and checks that it hashes to h.
func (s *Store) decodeVerify(h Hash, v, dst []byte) ([]byte, error) {
	b, err := s.codecs.decode(v, dst)
	if err != nil {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: err.Error()}
	}
	if len(b) != s.blockSize {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: fmt.Sprintf("decodes to %d bytes, want %d", len(b), s.blockSize)}
	}
	if got := HashBlock(b); got != h {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: "content hashes to " + got.String()}
	}
	return b, nil
}

// VerifyBlock re-reads block h from its pack (not the cache) and checks
// its hash.
func (s *Store) VerifyBlock(h Hash) error {
	_, err := s.loadBlock(context.Background(), h, nil)
	return err
}
