package blockstore

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Budget bounds the bytes of block data in flight across the daemon:
// read-ahead, NBD request and reply buffers, the block buffers of
// restores and hydration. One budget for all of them keeps the peak
// memory of a busy appliance a configured figure, however many clients
// and jobs run at once, instead of a sum of per-path constants. Safe for
// concurrent use.
type Budget struct {
	sem   *semaphore.Weighted
	total int64
	used  atomic.Int64
	peak  atomic.Int64
}

// NewBudget returns a budget of total bytes.
func NewBudget(total int64) *Budget {
	total = max(total, 1<<20)
	return &Budget{sem: semaphore.NewWeighted(total), total: total}
}

// clamp keeps a single request within the budget, so that a request
// larger than the whole budget waits for everything else instead of
// forever.
func (b *Budget) clamp(n int64) int64 { return min(max(n, 0), b.total) }

// Acquire waits until n bytes are free or ctx ends. Give the same n to
// Release.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	if err := b.sem.Acquire(ctx, b.clamp(n)); err != nil {
		return err
	}
	b.note(b.clamp(n))
	return nil
}

// TryAcquire takes n bytes if they are free now. Optional work
// (read-ahead) uses it and is skipped when the budget is spent.
func (b *Budget) TryAcquire(n int64) bool {
	if !b.sem.TryAcquire(b.clamp(n)) {
		return false
	}
	b.note(b.clamp(n))
	return true
}

// Release returns n bytes taken with Acquire or TryAcquire.
func (b *Budget) Release(n int64) {
	b.used.Add(-b.clamp(n))
	b.sem.Release(b.clamp(n))
}

func (b *Budget) note(n int64) {
	u := b.used.Add(n)
	for {
		p := b.peak.Load()
		if u <= p || b.peak.CompareAndSwap(p, u) {
			return
		}
	}
}

// BudgetStats are a budget's size, the bytes taken now and the most ever
// taken at once.
type BudgetStats struct {
	Total, Used, Peak int64
}

// Stats returns the budget's figures.
func (b *Budget) Stats() BudgetStats {
	return BudgetStats{Total: b.total, Used: b.used.Load(), Peak: b.peak.Load()}
}

// Budget returns the store's budget for data in flight, which the
// daemon shares with the NBD server, restores and hydration.
func (s *Store) Budget() *Budget { return s.budget }

// Workers returns the number of workers the store was opened with
// (Options.Workers, GOMAXPROCS by default).
func (s *Store) Workers() int { return s.opts.Workers }
