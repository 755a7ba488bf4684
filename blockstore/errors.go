package blockstore

import (
	"errors"
	"fmt"
)

// ErrBlockSizeMismatch means a store was opened with a block size other than
// the one it was created with.
var ErrBlockSizeMismatch = errors.New("block size mismatch")

// ErrClosed means the store was closed.
var ErrClosed = errors.New("store is closed")

// ErrInUse means another process (a running daemon) has the store open.
var ErrInUse = errors.New("store is in use by another process")

// ErrMapNotFound means no committed map has the given id.
var ErrMapNotFound = errors.New("block map not found")

// CorruptBlockError reports a block whose stored bytes do not hash to its
// key, or that cannot be decoded. Readers never return the bytes of such a
// block. It is permanent: reading again gives the same error.
type CorruptBlockError struct {
	Hash   Hash
	Map    MapID // zero when the block was read outside a map
	Block  int64 // index of the block in the map, -1 when unknown
	Reason string
}

func (e *CorruptBlockError) Error() string {
	where := ""
	if !e.Map.IsZero() {
		where = fmt.Sprintf(" (map %s block %d)", e.Map, e.Block)
	}
	return fmt.Sprintf("corrupt block %s%s: %s", e.Hash, where, e.Reason)
}

// MissingBlockError reports a block that a map refers to but the store does
// not hold. It is permanent.
type MissingBlockError struct {
	Hash   Hash
	Map    MapID
	Block  int64
	Reason string // optional: why it is missing
}

func (e *MissingBlockError) Error() string {
	msg := fmt.Sprintf("missing block %s (map %s block %d)", e.Hash, e.Map, e.Block)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// IsDataError reports whether err says that stored data is damaged, as
// opposed to a transient failure; callers map it to EIO.
func IsDataError(err error) bool {
	var c *CorruptBlockError
	var m *MissingBlockError
	var cm *CorruptMapError
	return errors.As(err, &c) || errors.As(err, &m) || errors.As(err, &cm)
}
