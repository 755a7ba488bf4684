package blockstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// HasBlock reports whether the store holds block h. The zero hash is
// always "held".
func (s *Store) HasBlock(h Hash) (bool, error) {
	if h.IsZero() {
		return true, nil
	}
	release, err := s.enter()
	if err != nil {
		return false, err
	}
	defer release()
	var ok bool
	err = s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(blockKey(h))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		ok = err == nil
		return err
	})
	if err != nil {
		return false, fmt.Errorf("look up block %s: %w", h, err)
	}
	return ok, nil
}

// ReadBlock returns the verified bytes of block h, from the cache or the
// database. The returned slice is shared and must not be modified. A
// block that does not hash to h is a *CorruptBlockError; one that is not in
// the store is a *MissingBlockError (map and index are filled in by the
// caller that knows them).
func (s *Store) ReadBlock(ctx context.Context, h Hash) ([]byte, error) {
	release, err := s.enter()
	if err != nil {
		return nil, err
	}
	release()
	if h.IsZero() {
		return s.zero, nil
	}
	if b, ok := s.cache.get(h); ok {
		return b, nil
	}
	return s.cache.fill(ctx, h, func() ([]byte, error) { return s.loadBlock(h) })
}

// loadBlock reads, decodes and verifies a block, bypassing the cache.
func (s *Store) loadBlock(h Hash) ([]byte, error) {
	release, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var out []byte
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(blockKey(h))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			b, err := s.codecs.decode(v, make([]byte, 0, s.blockSize))
			if err != nil {
				return &CorruptBlockError{Hash: h, Block: -1, Reason: err.Error()}
			}
			out = b
			return nil
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, &MissingBlockError{Hash: h, Block: -1}
	}
	if err != nil {
		var c *CorruptBlockError
		if errors.As(err, &c) {
			return nil, err
		}
		return nil, fmt.Errorf("read block %s: %w", h, err)
	}
	if len(out) != s.blockSize {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: fmt.Sprintf("decodes to %d bytes, want %d", len(out), s.blockSize)}
	}
	if got := HashBlock(out); got != h {
		return nil, &CorruptBlockError{Hash: h, Block: -1, Reason: "content hashes to " + got.String()}
	}
	return out, nil
}

// VerifyBlock re-reads block h from the database (not the cache) and checks
// its hash. It is what scrub calls.
func (s *Store) VerifyBlock(h Hash) error {
	_, err := s.loadBlock(h)
	return err
}
