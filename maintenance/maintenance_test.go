package maintenance

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/catalog"
	"csbs/scheduler"
)

func utc(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestScheduleNext(t *testing.T) {
	cases := []struct {
		name string
		s    Schedule
		now  string
		want string // RFC 3339; empty: never
	}{
		{"off", Schedule{}, "2026-11-25T10:00:00Z", ""},
		{"interval", Schedule{Every: 6 * time.Hour}, "2026-11-25T10:00:00Z", "2026-11-25T16:00:00Z"},
		{"later today", Schedule{Daily: "03:00"}, "2026-11-25T01:00:00Z", "2026-11-25T03:00:00Z"},
		{"passed today", Schedule{Daily: "03:00"}, "2026-11-25T04:00:00Z", "2026-11-26T03:00:00Z"},
		{"exactly now runs tomorrow", Schedule{Daily: "03:00"}, "2026-11-25T03:00:00Z", "2026-11-26T03:00:00Z"},
		{"month end", Schedule{Daily: "00:30"}, "2026-11-30T23:00:00Z", "2026-12-01T00:30:00Z"},
		{"time zone", Schedule{Daily: "03:00", Timezone: "Asia/Shanghai"}, "2026-11-25T10:00:00Z", "2026-11-25T19:00:00Z"},
		// Europe/Berlin skips 02:00-03:00 on 2026-03-29: 02:30 runs at the
		// first valid minute, 03:00 CEST.
		{"DST skip", Schedule{Daily: "02:30", Timezone: "Europe/Berlin"}, "2026-03-28T23:00:00Z", "2026-03-29T01:00:00Z"},
		// 2026-10-25 repeats 02:00-03:00 in Berlin: it runs once, at the
		// first 02:30 (CEST), and next on the following day.
		{"DST repeat", Schedule{Daily: "02:30", Timezone: "Europe/Berlin"}, "2026-10-24T23:00:00Z", "2026-10-25T00:30:00Z"},
		{"not again at the second 02:30", Schedule{Daily: "02:30", Timezone: "Europe/Berlin"}, "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"},
		{"unparsable wall time is never", Schedule{Daily: "3am"}, "2026-11-25T10:00:00Z", ""},
		{"unknown zone is never", Schedule{Daily: "03:00", Timezone: "Mars/Olympus"}, "2026-11-25T10:00:00Z", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.s.Next(utc(t, tc.now))
			if tc.want == "" {
				if ok {
					t.Fatalf("Next = %s, want never", got)
				}
				return
			}
			if !ok || !got.Equal(utc(t, tc.want)) {
				t.Fatalf("Next(%s) = %s %v, want %s", tc.now, got.UTC().Format(time.RFC3339), ok, tc.want)
			}
		})
	}
}

// harness runs a Timer on a fake clock and records what it submits.
type harness struct {
	t       *testing.T
	clock   *scheduler.FakeClock
	timer   *Timer
	submits chan string
	logs    *syncBuffer

	mu   sync.Mutex
	fail error // returned by the next submissions
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newHarness(t *testing.T, start time.Time) *harness {
	h := &harness{t: t, clock: scheduler.NewFakeClock(start), submits: make(chan string, 16), logs: &syncBuffer{}}
	h.timer = &Timer{Clock: h.clock, Log: slog.New(slog.NewTextHandler(h.logs, nil)), Submit: func(kind string) error {
		h.submits <- kind
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.fail
	}}
	return h
}

// run starts a loop and returns a func that stops it and waits for it.
func (h *harness) run(kind string, s Schedule) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.timer.Run(ctx, kind, s)
	}()
	stop := func() { cancel(); <-done }
	h.t.Cleanup(stop)
	return stop
}

// waitArmed waits until n loops sleep on the clock.
func (h *harness) waitArmed(n int) {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for h.clock.Waiters() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d timers wait on the clock, want %d", h.clock.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) next(kind string) time.Time {
	h.t.Helper()
	n, ok := h.timer.Next(kind)
	if !ok {
		h.t.Fatalf("no next %s", kind)
	}
	return n
}

func (h *harness) noSubmission() {
	h.t.Helper()
	select {
	case k := <-h.submits:
		h.t.Fatalf("unexpected %s submitted at %s", k, h.clock.Now())
	default:
	}
}

// TestTimerInterval: an interval counts from the loop's start and again
// from each run; nothing runs before the deadline.
func TestTimerInterval(t *testing.T) {
	start := utc(t, "2026-06-01T01:00:00Z")
	h := newHarness(t, start)
	h.run(catalog.JobScrub, Schedule{Every: 6 * time.Hour})
	h.waitArmed(1)
	if got := h.next(catalog.JobScrub); !got.Equal(start.Add(6 * time.Hour)) {
		t.Fatalf("next scrub %s, want 07:00", got)
	}
	h.clock.Set(start.Add(6*time.Hour - time.Minute))
	h.noSubmission()
	for i := 1; i <= 3; i++ {
		h.clock.Set(start.Add(time.Duration(i) * 6 * time.Hour))
		if k := <-h.submits; k != catalog.JobScrub {
			t.Fatalf("submitted %s", k)
		}
		h.waitArmed(1)
		if got, want := h.next(catalog.JobScrub), start.Add(time.Duration(i+1)*6*time.Hour); !got.Equal(want) {
			t.Fatalf("after run %d: next %s, want %s", i, got, want)
		}
		h.noSubmission()
	}
}

// TestTimerDaily: a wall time in a zone runs once a day at that time,
// and Next reports it in UTC.
func TestTimerDaily(t *testing.T) {
	start := utc(t, "2026-06-01T01:00:00Z")
	h := newHarness(t, start)
	h.run(catalog.JobGC, Schedule{Daily: "05:00", Timezone: "Asia/Shanghai"}) // 21:00 UTC
	h.waitArmed(1)
	first := utc(t, "2026-06-01T21:00:00Z")
	if got := h.next(catalog.JobGC); !got.Equal(first) || got.Location() != time.UTC {
		t.Fatalf("next gc %s, want %s in UTC", got, first)
	}
	h.clock.Set(first)
	<-h.submits
	h.waitArmed(1)
	if got := h.next(catalog.JobGC); !got.Equal(first.Add(24 * time.Hour)) {
		t.Fatalf("next gc after a run %s, want a day later", got)
	}
}

// TestTimerByHandOnly: no schedule submits nothing and reports no next
// time; the loop ends at once.
func TestTimerByHandOnly(t *testing.T) {
	h := newHarness(t, utc(t, "2026-06-01T01:00:00Z"))
	h.timer.Run(context.Background(), catalog.JobGC, Schedule{})
	if n, ok := h.timer.Next(catalog.JobGC); ok {
		t.Fatalf("next gc %s for a by-hand schedule", n)
	}
	h.noSubmission()
}

// TestTimerStop: a stopped loop forgets its next time and submits
// nothing more; the other kind keeps its own.
func TestTimerStop(t *testing.T) {
	start := utc(t, "2026-06-01T01:00:00Z")
	h := newHarness(t, start)
	stopGC := h.run(catalog.JobGC, Schedule{Every: time.Hour})
	h.run(catalog.JobScrub, Schedule{Every: 2 * time.Hour})
	h.waitArmed(2)
	stopGC()
	if n, ok := h.timer.Next(catalog.JobGC); ok {
		t.Fatalf("stopped gc still reports next %s", n)
	}
	if got := h.next(catalog.JobScrub); !got.Equal(start.Add(2 * time.Hour)) {
		t.Fatalf("next scrub %s", got)
	}
	h.clock.Set(start.Add(time.Hour))
	h.noSubmission()
}

// TestTimerSubmitFails: a refused submission is logged with its kind and
// the loop carries on to the next time.
func TestTimerSubmitFails(t *testing.T) {
	start := utc(t, "2026-06-01T01:00:00Z")
	h := newHarness(t, start)
	h.fail = errors.New("store full")
	h.run(catalog.JobGC, Schedule{Every: time.Hour})
	h.waitArmed(1)
	h.clock.Set(start.Add(time.Hour))
	<-h.submits
	h.waitArmed(1)
	if got := h.next(catalog.JobGC); !got.Equal(start.Add(2 * time.Hour)) {
		t.Fatalf("next gc after a failed submission %s", got)
	}
	if log := h.logs.String(); !strings.Contains(log, "kind=gc") || !strings.Contains(log, "store full") {
		t.Fatalf("log %q does not name the kind and the error", log)
	}
	h.mu.Lock()
	h.fail = nil
	h.mu.Unlock()
	h.clock.Set(start.Add(2 * time.Hour))
	<-h.submits
}
