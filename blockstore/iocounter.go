package blockstore

import (
	"context"
	"sync/atomic"
)

// IOCounter counts the requests a PackStore makes on behalf of one unit
// of work (a job): pack writes (PUTs) and reads (GETs), and their bytes.
// A PackStore finds it in the context of each call (IOCounterFrom) and
// counts what it really sends: an object store counts HTTP requests,
// retries included, and none for a read its cache serves. The zero value
// is ready; a nil *IOCounter ignores every Add. Safe for concurrent use.
type IOCounter struct {
	puts, putBytes, gets, getBytes atomic.Int64
}

// IOStats are an IOCounter's figures.
type IOStats struct {
	Puts     int64 `json:"puts"`
	PutBytes int64 `json:"put_bytes"`
	Gets     int64 `json:"gets"`
	GetBytes int64 `json:"get_bytes"`
}

// AddPut counts one write request of n bytes.
func (c *IOCounter) AddPut(n int64) {
	if c != nil {
		c.puts.Add(1)
		c.putBytes.Add(n)
	}
}

// AddGet counts one read request that returned n bytes.
func (c *IOCounter) AddGet(n int64) {
	if c != nil {
		c.gets.Add(1)
		c.getBytes.Add(n)
	}
}

// Stats returns the counts so far.
func (c *IOCounter) Stats() IOStats {
	if c == nil {
		return IOStats{}
	}
	return IOStats{Puts: c.puts.Load(), PutBytes: c.putBytes.Load(), Gets: c.gets.Load(), GetBytes: c.getBytes.Load()}
}

type ioCounterKey struct{}

// WithIOCounter returns a context whose pack store requests are counted
// in c.
func WithIOCounter(ctx context.Context, c *IOCounter) context.Context {
	return context.WithValue(ctx, ioCounterKey{}, c)
}

// IOCounterFrom returns the counter of ctx, or nil (which counts nothing).
func IOCounterFrom(ctx context.Context) *IOCounter {
	c, _ := ctx.Value(ioCounterKey{}).(*IOCounter)
	return c
}

// ReadHint tells a PackStore how the bytes of a read will be used, so
// that a cache in front of a slow store keeps what is read again.
type ReadHint int

const (
	// ReadDefault: blocks read for NBD, FUSE, restores and hydration,
	// likely to be read again (neighbours too). A cache may fill from
	// these reads and serve them.
	ReadDefault ReadHint = iota
	// ReadOnce: every byte of a pack visited once (scrub, GC's repack,
	// rebuild-index). A cache neither serves nor keeps these reads:
	// they must see the store's own bytes (scrub verifies the store, not
	// a local copy), and they would evict the working set.
	ReadOnce
)

type readHintKey struct{}

// WithReadHint returns a context whose pack reads carry hint h.
func WithReadHint(ctx context.Context, h ReadHint) context.Context {
	return context.WithValue(ctx, readHintKey{}, h)
}

// ReadHintFrom returns the read hint of ctx (ReadDefault when none).
func ReadHintFrom(ctx context.Context) ReadHint {
	h, _ := ctx.Value(readHintKey{}).(ReadHint)
	return h
}
