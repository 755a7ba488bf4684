package hydrate

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Hydrator copies every block the target lacks from the backup, with
// several workers on extents of consecutive blocks, at most the rate of
// its Limiter.
type Hydrator struct {
	dev     *Device
	limiter *Limiter
	workers int
	budget  Budget

	mu      sync.Mutex
	paused  bool
	resume  chan struct{}
	copied  atomic.Int64 // bytes copied by the hydrator
	started time.Time

	// OnCopied, when set before Run, is told about every copied extent
	// (metrics).
	OnCopied func(n int64)
}

// Budget bounds memory in flight (the store's budget in the daemon):
// each worker takes one block buffer from it while it runs.
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	Release(n int64)
}

// Sync points of a running hydration: after syncBytes written since the
// last one, and at least every syncInterval. A sync point runs beside the
// workers, which go on copying.
const (
	syncBytes    = 64 << 20
	syncInterval = time.Second
	// extentBlocks is how many consecutive blocks a worker takes at a time.
	extentBlocks = 16
)

// Options tune a hydrator.
type Options struct {
	// Limiter is the rate limit; the hydrators of one restore share one
	// so that the restore as a whole keeps its rate. Nil: unlimited.
	Limiter *Limiter
	// Workers copy blocks in parallel; default GOMAXPROCS.
	Workers int
	// Budget, if set, lends each worker its block buffer.
	Budget Budget
}

// NewHydrator returns a hydrator with its own limit of rateBps (<= 0:
// unlimited) and the default workers.
func NewHydrator(dev *Device, rateBps int64) *Hydrator {
	return NewHydratorWith(dev, Options{Limiter: NewLimiter(rateBps)})
}

// NewHydratorWith returns a hydrator tuned by opt.
func NewHydratorWith(dev *Device, opt Options) *Hydrator {
	if opt.Limiter == nil {
		opt.Limiter = NewLimiter(0)
	}
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0)
	}
	return &Hydrator{dev: dev, limiter: opt.Limiter, workers: opt.Workers, budget: opt.Budget, resume: make(chan struct{})}
}

// SetRate changes the rate limit (bytes per second, <= 0 unlimited) of
// the hydrator's Limiter, and so of every hydrator sharing it.
func (h *Hydrator) SetRate(bps int64) { h.limiter.SetRate(bps) }

// Limiter is a byte rate limit that several hydrators may share. Safe
// for concurrent use.
type Limiter struct {
	mu  sync.Mutex
	lim *rate.Limiter
	// now and sleep are the clock (tests replace them).
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

// NewLimiter returns a limit of bps bytes per second (<= 0: unlimited).
// Its bucket starts empty: the limit holds from the first byte, rather
// than after a burst at full speed (which made a small restore report
// several times its limit).
func NewLimiter(bps int64) *Limiter { return newLimiter(bps, time.Now, sleepCtx) }

// newLimiter is NewLimiter on a given clock.
func newLimiter(bps int64, now func() time.Time, sleep func(context.Context, time.Duration) error) *Limiter {
	l := &Limiter{lim: rate.NewLimiter(rate.Inf, 8<<20), now: now, sleep: sleep}
	l.SetRate(bps)
	l.lim.ReserveN(now(), l.lim.Burst())
	return l
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetRate changes the limit.
func (l *Limiter) SetRate(bps int64) {
	lim, burst := rate.Inf, 8<<20
	if bps > 0 {
		lim = rate.Limit(bps)
		// A burst of a quarter second keeps the rate exact over any
		// second and lets several workers take blocks at once; wait
		// splits larger requests, so a slow rate needs no larger one.
		burst = int(max(min(bps/4, 8<<20), 1))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.lim.SetLimitAt(now, lim)
	l.lim.SetBurstAt(now, burst)
}

// wait takes n bytes of the limit, waiting as long as the rate requires.
// Every byte is reserved before it is written, whichever worker writes
// it, so over any interval the bytes written stay within the rate plus
// one burst.
func (l *Limiter) wait(ctx context.Context, n int64) error {
	for n > 0 {
		l.mu.Lock()
		k := min(n, int64(l.lim.Burst()))
		now := l.now()
		r := l.lim.ReserveN(now, int(k))
		l.mu.Unlock()
		if !r.OK() {
			return fmt.Errorf("rate limit: %d bytes exceed the burst", k)
		}
		if d := r.DelayFrom(now); d > 0 {
			if err := l.sleep(ctx, d); err != nil {
				l.mu.Lock()
				r.CancelAt(l.now())
				l.mu.Unlock()
				return err
			}
		}
		n -= k
	}
	return nil
}

// Pause stops copying after the blocks in progress.
func (h *Hydrator) Pause() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.paused = true
}

// Resume continues after Pause.
func (h *Hydrator) Resume() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.paused {
		h.paused = false
		close(h.resume)
		h.resume = make(chan struct{})
	}
}

// Paused reports whether the hydrator is paused.
func (h *Hydrator) Paused() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.paused
}

// Rate is the hydrator's average copy rate so far, bytes per second.
func (h *Hydrator) Rate() float64 {
	h.mu.Lock()
	start := h.started
	h.mu.Unlock()
	if start.IsZero() {
		return 0
	}
	return float64(h.copied.Load()) / max(time.Since(start).Seconds(), 0.001)
}

// Run copies until every block is in the target or ctx ends. Workers
// take extents of extentBlocks blocks in disk order; a syncer makes what
// they wrote durable every syncBytes or syncInterval, without stopping
// them; the last sync point runs before Run returns.
func (h *Hydrator) Run(ctx context.Context) error {
	h.mu.Lock()
	h.started = time.Now()
	h.mu.Unlock()
	d := h.dev
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var unsynced atomic.Int64 // bytes written since the last sync point
	syncNow := make(chan struct{}, 1)
	syncerDone := make(chan struct{})
	stopSyncer := make(chan struct{})
	go func() {
		defer close(syncerDone)
		t := time.NewTicker(syncInterval)
		defer t.Stop()
		for {
			select {
			case <-stopSyncer:
				return
			case <-syncNow:
			case <-t.C:
				if unsynced.Load() == 0 && !d.hasHydrated() {
					continue // nothing copied since the last sync point
				}
			}
			unsynced.Store(0)
			if err := d.syncPoint(); err != nil {
				cancel(err)
				return
			}
		}
	}()

	var next atomic.Int64
	extents := (d.bm.Blocks() + extentBlocks - 1) / extentBlocks
	var wg sync.WaitGroup
	for range h.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if h.budget != nil {
				if err := h.budget.Acquire(ctx, d.bs); err != nil {
					cancel(err)
					return
				}
				defer h.budget.Release(d.bs)
			}
			buf := make([]byte, d.bs)
			for {
				e := next.Add(1) - 1
				if e >= extents {
					return
				}
				for i := e * extentBlocks; i < min((e+1)*extentBlocks, d.bm.Blocks()); i++ {
					if err := h.waitResume(ctx); err != nil {
						cancel(err)
						return
					}
					wrote, err := h.copyBlockCtx(ctx, i, buf)
					if err != nil {
						cancel(fmt.Errorf("hydrate block %d: %w", i, err))
						return
					}
					if wrote == 0 {
						continue
					}
					h.copied.Add(wrote)
					if h.OnCopied != nil {
						h.OnCopied(wrote)
					}
					if unsynced.Add(wrote) >= syncBytes {
						select {
						case syncNow <- struct{}{}:
						default:
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stopSyncer)
	<-syncerDone
	err := context.Cause(ctx)
	// Whatever was copied gets its bits, also when Run stops early.
	if serr := d.syncPoint(); err == nil {
		err = serr
	}
	return err
}

func (h *Hydrator) waitResume(ctx context.Context) error {
	for {
		h.mu.Lock()
		paused, ch := h.paused, h.resume
		h.mu.Unlock()
		if !paused {
			return ctx.Err()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// copyBlock hydrates block i (see copyBlockCtx), for tests that drive
// the hydrator step by step.
func (h *Hydrator) copyBlock(i int64) (int64, error) {
	return h.copyBlockCtx(context.Background(), i, make([]byte, h.dev.bs))
}

// copyBlockCtx hydrates block i unless the target holds it (a guest wrote
// or read it meanwhile), and returns the bytes written. The rate limit
// is taken before the write. The block is decoded into buf outside the
// block's lock; the check and the write happen under it.
func (h *Hydrator) copyBlockCtx(ctx context.Context, i int64, buf []byte) (int64, error) {
	d := h.dev
	if d.bm.Has(i) {
		return 0, nil
	}
	hash, err := d.vol.BlockHash(i)
	if err != nil {
		return 0, err
	}
	var b []byte
	if !hash.IsZero() || !d.fresh {
		if b, err = d.vol.BlockTo(ctx, i, buf); err != nil {
			return 0, err
		}
		if err := h.limiter.wait(ctx, d.blockLen(i)); err != nil {
			return 0, err
		}
	}
	mu := d.lock(i)
	mu.Lock()
	defer mu.Unlock()
	if d.bm.Has(i) {
		return 0, nil
	}
	if b == nil {
		// A zero block of a fresh target: written only if the target
		// does not read zeroes there (see backupBlock).
		if b, err = d.backupBlock(i); err != nil {
			return 0, err
		}
		if b != nil {
			// Rare (what a crash left on a fresh target): the limit is
			// taken under the block's lock, so that every byte written
			// is within it.
			if err := h.limiter.wait(ctx, d.blockLen(i)); err != nil {
				return 0, err
			}
		}
	}
	var wrote int64
	if b != nil {
		if _, err := d.target.WriteAt(b[:d.blockLen(i)], i*d.bs); err != nil {
			return 0, fmt.Errorf("write target at %d: %w", i*d.bs, err)
		}
		wrote = d.blockLen(i)
	}
	d.bm.setHave(i)
	d.noteHydrated(i)
	return wrote, nil
}
