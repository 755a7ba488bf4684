package maintenance

import (
	"cmp"
	"context"
	"log/slog"
	"sync"
	"time"

	"csbs/catalog"
	"csbs/scheduler"
)

// Schedule is when one maintenance kind runs on its own. Set at most one
// of Every and Daily; neither means by hand only.
type Schedule struct {
	// Every is an interval from the start of the loop.
	Every time.Duration
	// Daily is a wall time "HH:MM" in Timezone.
	Daily string
	// Timezone is an IANA name for Daily; empty is UTC.
	Timezone string
}

// Next returns when s runs next after now, and false when it runs only
// by hand (or Daily does not parse: configuration validates it first).
// A daily wall time follows the policies' rules (scheduler.NextRuns): a
// time skipped by DST runs at the first valid minute after it, a time
// that occurs twice runs once, at the first occurrence.
func (s Schedule) Next(now time.Time) (time.Time, bool) {
	if s.Every > 0 {
		return now.Add(s.Every), true
	}
	if s.Daily == "" {
		return time.Time{}, false
	}
	daily := catalog.Policy{
		Name: "maintenance", Times: []string{s.Daily}, Period: catalog.PeriodDays, EveryN: 1,
		Timezone: cmp.Or(s.Timezone, "UTC"), Created: now,
	}
	runs, err := scheduler.NextRuns(daily, now, 1)
	if err != nil || len(runs) == 0 {
		return time.Time{}, false
	}
	return runs[0], true
}

// Timer submits maintenance jobs on their schedules and remembers when
// each kind runs next.
type Timer struct {
	// Clock tells the time; tests use a scheduler.FakeClock.
	Clock scheduler.Clock
	// Log receives submissions that fail.
	Log *slog.Logger
	// Submit queues a job of kind (catalog.JobGC, catalog.JobScrub). An
	// error is logged and the loop carries on with the next time.
	Submit func(kind string) error

	mu   sync.Mutex
	next map[string]time.Time
}

// Run submits kind on schedule s until ctx ends. Run one loop per kind.
func (t *Timer) Run(ctx context.Context, kind string, s Schedule) {
	defer t.setNext(kind, time.Time{})
	for {
		next, ok := s.Next(t.Clock.Now())
		if !ok {
			return
		}
		t.setNext(kind, next)
		select {
		case <-ctx.Done():
			return
		case <-t.Clock.After(next.Sub(t.Clock.Now())):
		}
		if err := t.Submit(kind); err != nil && t.Log != nil {
			t.Log.Warn("scheduled maintenance", "kind", kind, "err", err)
		}
	}
}

// Next returns when kind runs next (UTC), and false when no loop of that
// kind is waiting (by hand only, or not running).
func (t *Timer) Next(kind string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.next[kind]
	return n, ok
}

// setNext records when kind runs next; a zero time: never.
func (t *Timer) setNext(kind string, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if next.IsZero() {
		delete(t.next, kind)
		return
	}
	if t.next == nil {
		t.next = map[string]time.Time{}
	}
	t.next[kind] = next.UTC()
}
