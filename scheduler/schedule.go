package scheduler

import (
	"fmt"
	"slices"
	"time"

	"csbs/catalog"
)

// maxScanDays bounds the search for run times (100 runs of an every-30-days
// policy need 3000 days).
const maxScanDays = 3100

// NextRuns returns the next n execution times of a policy strictly after
// from, in ascending order, computed in the policy's timezone:
//
//   - every N days counts days from the policy's creation date;
//   - weekdays runs on the listed days;
//   - a time that does not exist on a day (the hour skipped when DST
//     starts) runs once at the first valid minute after it;
//   - a time that occurs twice (when DST ends) runs once, at the first
//     occurrence.
func NextRuns(p catalog.Policy, from time.Time, n int) ([]time.Time, error) {
	loc, err := time.LoadLocation(p.Timezone)
	if err != nil {
		return nil, fmt.Errorf("policy %s: timezone %q: %w", p.Name, p.Timezone, err)
	}
	mins := make([]int, 0, len(p.Times))
	for _, t := range p.Times {
		m, err := catalog.ParseClock(t)
		if err != nil {
			return nil, err
		}
		mins = append(mins, m)
	}
	slices.Sort(mins)
	days := map[time.Weekday]bool{}
	for _, w := range p.Weekdays {
		d, err := catalog.ParseWeekday(w)
		if err != nil {
			return nil, err
		}
		days[d] = true
	}
	anchor := civilDay(p.Created.In(loc))
	local := from.In(loc)
	// Start a day early: a DST shift can move a run of "yesterday" past from.
	day := time.Date(local.Year(), local.Month(), local.Day()-1, 0, 0, 0, 0, time.UTC)
	var out []time.Time
	for i := 0; i < maxScanDays && len(out) < n; i++ {
		d := day.AddDate(0, 0, i)
		if !runsOn(p, d, anchor, days) {
			continue
		}
		for _, m := range mins {
			t := wallTime(d, m, loc)
			if t.After(from) && (len(out) == 0 || t.After(out[len(out)-1])) {
				out = append(out, t)
				if len(out) == n {
					break
				}
			}
		}
	}
	return out, nil
}

// civilDay is the calendar date of t as midnight UTC, for day arithmetic
// that DST cannot disturb.
func civilDay(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func runsOn(p catalog.Policy, day, anchor time.Time, weekdays map[time.Weekday]bool) bool {
	switch p.Period {
	case catalog.PeriodWeekdays:
		return weekdays[day.Weekday()]
	case catalog.PeriodDays:
		if p.EveryN <= 1 {
			return true
		}
		diff := int(day.Sub(anchor).Hours() / 24)
		return ((diff%p.EveryN)+p.EveryN)%p.EveryN == 0
	}
	return false
}

// wallTime is the instant at which the local clock in loc first shows
// minute m of civil day d, or the first valid minute after it when that
// wall time does not exist.
func wallTime(d time.Time, m int, loc *time.Location) time.Time {
	y, mo, dd := d.Date()
	for k := 0; k < 24*60; k++ {
		want := m + k
		t := time.Date(y, mo, dd, 0, want, 0, 0, loc)
		lt := t.In(loc)
		if lt.Day() == time.Date(y, mo, dd, 0, want, 0, 0, time.UTC).Day() && lt.Hour()*60+lt.Minute() == want%(24*60) {
			return earliest(t, loc)
		}
	}
	return time.Date(y, mo, dd, 0, m, 0, 0, loc)
}

// earliest returns the first instant showing the same wall clock as t
// (they differ only in the hour that repeats when DST ends).
func earliest(t time.Time, loc *time.Location) time.Time {
	best := t
	lt := t.In(loc)
	for _, back := range []time.Duration{30 * time.Minute, time.Hour, 2 * time.Hour} {
		e := t.Add(-back).In(loc)
		if e.Hour() == lt.Hour() && e.Minute() == lt.Minute() && e.Day() == lt.Day() && e.Before(best) {
			best = e
		}
	}
	return best
}

// Schedule is one schedule (a policy's or a replication policy's) as a
// scheduler tick sees it.
type Schedule struct {
	// Fingerprint changes whenever the schedule's times change.
	Fingerprint string
	// Created is when the schedule was made; Enabled whether it runs.
	Created time.Time
	Enabled bool
	// Runs returns the first n run times after from.
	Runs func(from time.Time, n int) ([]time.Time, error)
}

// Due is what one tick found for a schedule.
type Due struct {
	// Slot is the latest run that is due; zero when none is.
	Slot time.Time
	// Note says why a due run is a catch-up ("" for a run on time).
	Note string
	// Next is the schedule's next run after this tick; zero: none.
	Next time.Time
}

// Tick advances a schedule's recorded state st to now and returns the run
// to start, if any; put records st. A new or changed schedule starts from
// now (from its creation, when the scheduler has never seen it) and never
// catches up older slots; a disabled one is recorded so that enabling it
// again counts as a change. Otherwise the runs due since the last tick
// make one run: a catch-up, with a note, when more than one was due or
// the latest was due before the daemon started.
func (sc Schedule) Tick(st catalog.SchedState, now, started time.Time, put func(catalog.SchedState) error) (Due, error) {
	if st.Fingerprint != sc.Fingerprint {
		st.Last = now
		if st.Fingerprint == "" && sc.Created.Before(now) {
			st.Last = sc.Created
		}
		st.Fingerprint = sc.Fingerprint
		if err := put(st); err != nil {
			return Due{}, err
		}
	}
	if !sc.Enabled {
		return Due{}, nil
	}
	runs, err := sc.Runs(st.Last, 1000)
	if err != nil {
		return Due{}, err
	}
	var d Due
	due := 0
	for _, r := range runs {
		if r.After(now) {
			break
		}
		d.Slot = r
		due++
	}
	if due > 0 {
		st.Last = d.Slot
		if err := put(st); err != nil {
			return Due{}, err
		}
		if due > 1 || d.Slot.Before(started) {
			d.Note = fmt.Sprintf("catch-up run: %d scheduled run(s) were missed while the daemon was down (latest due %s)", due, d.Slot.Format(time.RFC3339))
		}
	}
	next, err := sc.Runs(st.Last, 1)
	if err != nil {
		return Due{}, err
	}
	if len(next) > 0 {
		d.Next = next[0]
	}
	return d, nil
}
