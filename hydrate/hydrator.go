package hydrate

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Hydrator copies every block the target lacks from the backup, in disk
// order, at most Rate bytes per second.
type Hydrator struct {
	dev     *Device
	limiter *rate.Limiter

	mu      sync.Mutex
	paused  bool
	resume  chan struct{}
	copied  atomic.Int64 // bytes copied by the hydrator
	started time.Time

	// OnCopied, when set before Run, is told about every copied extent
	// (metrics).
	OnCopied func(n int64)
}

// syncEvery is how many hydrated blocks share one fdatasync of the target
// (64 MiB at 64 KiB blocks), and syncInterval the longest time between two.
const (
	syncEvery    = 1024
	syncInterval = time.Second
	lookahead    = 32 // blocks fetched (decompressed, verified) ahead of the copy
	fetchWorkers = 2
)

// NewHydrator returns a hydrator; rateBps <= 0 means unlimited.
func NewHydrator(dev *Device, rateBps int64) *Hydrator {
	h := &Hydrator{dev: dev, resume: make(chan struct{})}
	h.SetRate(rateBps)
	return h
}

// SetRate changes the rate limit (bytes per second, <= 0 unlimited).
func (h *Hydrator) SetRate(bps int64) {
	lim := rate.Inf
	burst := 8 << 20
	if bps > 0 {
		lim = rate.Limit(bps)
		burst = int(max(min(bps, 8<<20), h.dev.bs))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limiter == nil {
		h.limiter = rate.NewLimiter(lim, burst)
		return
	}
	h.limiter.SetLimit(lim)
	h.limiter.SetBurst(burst)
}

// Pause stops copying after the current block.
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

// Run copies until every block is in the target or ctx ends.
func (h *Hydrator) Run(ctx context.Context) error {
	h.mu.Lock()
	h.started = time.Now()
	// The bucket starts empty: a limit holds from the first byte, rather
	// than after a burst of up to 8 MiB at full speed (which made a small
	// restore report several times its limit).
	h.limiter.ReserveN(h.started, h.limiter.Burst())
	h.mu.Unlock()
	d := h.dev
	// Fetch blocks ahead on several cores; copyBlock then finds them in
	// the store's block cache (or waits for the fetch in flight).
	ahead := make(chan int64, lookahead)
	fctx, stopFetch := context.WithCancel(ctx)
	var fetchers sync.WaitGroup
	for range fetchWorkers {
		fetchers.Add(1)
		go func() {
			defer fetchers.Done()
			for i := range ahead {
				if fctx.Err() == nil && !d.bm.Has(i) {
					_, _ = d.vol.Block(fctx, i) // errors surface in copyBlock
				}
			}
		}()
	}
	defer func() {
		stopFetch()
		close(ahead)
		fetchers.Wait()
	}()
	nextAhead := int64(0)
	lastSync := time.Now()
	var batch []int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// Data first, then the bits that vouch for it (and for the guest's
		// writes recorded in the journal meanwhile).
		if err := d.syncPoint(batch); err != nil {
			return err
		}
		batch = batch[:0]
		lastSync = time.Now()
		return nil
	}
	for i := int64(0); i < d.bm.Blocks(); i++ {
		if err := h.waitResume(ctx); err != nil {
			return firstErr(flush(), err)
		}
		if d.bm.Has(i) {
			continue
		}
		for ; nextAhead < min(i+lookahead, d.bm.Blocks()); nextAhead++ {
			if nextAhead <= i || d.bm.Has(nextAhead) {
				continue
			}
			if hash, err := d.vol.BlockHash(nextAhead); err != nil || (hash.IsZero() && d.fresh) {
				continue
			}
			select {
			case ahead <- nextAhead:
			default: // fetchers busy; the copy fetches it itself
			}
		}
		wrote, err := h.copyBlock(i)
		if err != nil {
			return firstErr(flush(), fmt.Errorf("hydrate block %d: %w", i, err))
		}
		batch = append(batch, i)
		if wrote > 0 {
			h.copied.Add(wrote)
			if h.OnCopied != nil {
				h.OnCopied(wrote)
			}
			if err := h.limiter.WaitN(ctx, int(min(wrote, int64(h.limiter.Burst())))); err != nil {
				return firstErr(flush(), err)
			}
		}
		if len(batch) >= syncEvery || time.Since(lastSync) > syncInterval {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
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

// copyBlock hydrates block i under its lock unless the guest wrote it
// meanwhile, and returns the bytes written.
func (h *Hydrator) copyBlock(i int64) (int64, error) {
	d := h.dev
	mu := d.lock(i)
	mu.Lock()
	defer mu.Unlock()
	if d.bm.Has(i) {
		return 0, nil
	}
	wrote, err := d.fill(i)
	if err != nil {
		return 0, err
	}
	d.bm.setHave(i)
	if !wrote {
		return 0, nil
	}
	return d.blockLen(i), nil
}
