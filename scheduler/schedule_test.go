package scheduler

import (
	"strings"
	"testing"
	"time"

	"csbs/catalog"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestNextRuns(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		policy catalog.Policy
		from   string // RFC3339
		want   []string
	}{
		{
			name:   "daily once",
			policy: catalog.Policy{Times: []string{"02:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "UTC"},
			from:   "2026-05-10T01:00:00Z",
			want:   []string{"2026-05-10T02:00:00Z", "2026-05-11T02:00:00Z", "2026-05-12T02:00:00Z"},
		},
		{
			name:   "strictly after from",
			policy: catalog.Policy{Times: []string{"02:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "UTC"},
			from:   "2026-05-10T02:00:00Z",
			want:   []string{"2026-05-11T02:00:00Z"},
		},
		{
			name:   "several times a day",
			policy: catalog.Policy{Times: []string{"02:00", "14:00", "20:30"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "UTC"},
			from:   "2026-05-10T13:00:00Z",
			want:   []string{"2026-05-10T14:00:00Z", "2026-05-10T20:30:00Z", "2026-05-11T02:00:00Z", "2026-05-11T14:00:00Z"},
		},
		{
			name:   "every 3 days from creation",
			policy: catalog.Policy{Times: []string{"06:00"}, Period: catalog.PeriodDays, EveryN: 3, Timezone: "UTC"},
			from:   "2026-01-02T00:00:00Z",
			want:   []string{"2026-01-04T06:00:00Z", "2026-01-07T06:00:00Z", "2026-01-10T06:00:00Z"},
		},
		{
			name:   "every 2 days across month ends",
			policy: catalog.Policy{Times: []string{"23:59"}, Period: catalog.PeriodDays, EveryN: 2, Timezone: "UTC"},
			from:   "2026-01-28T00:00:00Z",
			want:   []string{"2026-01-29T23:59:00Z", "2026-01-31T23:59:00Z", "2026-02-02T23:59:00Z"},
		},
		{
			name:   "daily across February end",
			policy: catalog.Policy{Times: []string{"00:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "UTC"},
			from:   "2026-02-27T12:00:00Z",
			want:   []string{"2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z"},
		},
		{
			name:   "weekdays",
			policy: catalog.Policy{Times: []string{"03:00"}, Period: catalog.PeriodWeekdays, Weekdays: []string{"mon", "thu"}, Timezone: "UTC"},
			from:   "2026-05-10T00:00:00Z", // a Sunday
			want:   []string{"2026-05-11T03:00:00Z", "2026-05-14T03:00:00Z", "2026-05-18T03:00:00Z"},
		},
		{
			name:   "timezone Asia/Shanghai",
			policy: catalog.Policy{Times: []string{"02:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "Asia/Shanghai"},
			from:   "2026-05-10T00:00:00Z",
			want:   []string{"2026-05-10T18:00:00Z", "2026-05-11T18:00:00Z"},
		},
		{
			name:   "weekday in the policy's zone, not UTC",
			policy: catalog.Policy{Times: []string{"01:00"}, Period: catalog.PeriodWeekdays, Weekdays: []string{"mon"}, Timezone: "Asia/Shanghai"},
			from:   "2026-05-10T00:00:00Z",
			want:   []string{"2026-05-10T17:00:00Z"}, // Monday 01:00 in Shanghai is Sunday 17:00 UTC
		},
		{
			name:   "Berlin: 02:30 does not exist on 29 March, runs once at 03:00",
			policy: catalog.Policy{Times: []string{"02:30"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "Europe/Berlin"},
			from:   "2026-03-27T12:00:00Z",
			want:   []string{"2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"},
		},
		{
			name:   "Berlin: 02:30 occurs twice on 25 October, runs once (first)",
			policy: catalog.Policy{Times: []string{"02:30"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "Europe/Berlin"},
			from:   "2026-10-24T12:00:00Z",
			want:   []string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"},
		},
		{
			name:   "New York: 02:15 skipped on 8 March, runs at 03:00",
			policy: catalog.Policy{Times: []string{"02:15"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "America/New_York"},
			from:   "2026-03-07T12:00:00Z",
			want:   []string{"2026-03-08T07:00:00Z", "2026-03-09T06:15:00Z"},
		},
		{
			name:   "New York: 01:30 twice on 1 November, runs once (EDT)",
			policy: catalog.Policy{Times: []string{"01:30"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "America/New_York"},
			from:   "2026-10-31T12:00:00Z",
			want:   []string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"},
		},
		{
			name:   "New York: two times around the repeated hour keep order",
			policy: catalog.Policy{Times: []string{"00:30", "01:30", "03:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: "America/New_York"},
			from:   "2026-11-01T00:00:00Z",
			want:   []string{"2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z", "2026-11-01T08:00:00Z"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.policy.Name = "p"
			tc.policy.Created = created
			from, err := time.Parse(time.RFC3339, tc.from)
			if err != nil {
				t.Fatal(err)
			}
			got, err := NextRuns(tc.policy, from, len(tc.want))
			if err != nil {
				t.Fatal(err)
			}
			var gotS []string
			for _, g := range got {
				gotS = append(gotS, g.UTC().Format(time.RFC3339))
			}
			if strings.Join(gotS, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("got  %v\nwant %v", gotS, tc.want)
			}
		})
	}
}

// Over a whole year in several zones, runs are strictly increasing, land
// on the wall clock asked for (or the first minute after a skipped one),
// and happen once per day per time.
func TestNextRunsYearInvariants(t *testing.T) {
	for _, zone := range []string{"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"} {
		loc := mustLoc(t, zone)
		p := catalog.Policy{Name: "p", Times: []string{"00:30", "02:30", "13:00"}, Period: catalog.PeriodDays, EveryN: 1, Timezone: zone, Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		runs, err := NextRuns(p, time.Date(2026, 1, 1, 0, 0, 0, 0, loc), 365*3)
		if err != nil {
			t.Fatal(err)
		}
		perDay := map[string]int{}
		for i, r := range runs {
			if i > 0 && !r.After(runs[i-1]) {
				t.Fatalf("%s: run %d %s not after %s", zone, i, r, runs[i-1])
			}
			lt := r.In(loc)
			perDay[lt.Format("2006-01-02")]++
			hm := lt.Format("15:04")
			if hm != "00:30" && hm != "02:30" && hm != "13:00" && !(lt.Minute() == 0 || lt.Minute() == 30) {
				t.Fatalf("%s: run at odd wall time %s", zone, lt)
			}
		}
		for day, n := range perDay {
			if n != 3 {
				t.Fatalf("%s: %d runs on %s, want 3", zone, n, day)
			}
		}
	}
}

// TestScheduleTick: the rules one tick applies to a schedule's recorded
// state, shared by policies and replication policies.
func TestScheduleTick(t *testing.T) {
	at := func(hm string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", "2026-03-01 "+hm)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	hourly := func(from time.Time, n int) ([]time.Time, error) {
		var out []time.Time
		for r := from.Truncate(time.Hour).Add(time.Hour); len(out) < n; r = r.Add(time.Hour) {
			out = append(out, r)
		}
		return out, nil
	}
	cases := []struct {
		name     string
		st       catalog.SchedState
		fp       string
		created  string
		disabled bool
		now      string
		started  string
		wantSlot string // "" for no run
		wantNote string // a part of the note; "" for none
		wantNext string // "" for none
		wantLast string // the state recorded last
		wantPuts int
	}{
		{"never seen: starts from its creation", catalog.SchedState{}, "a", "09:30", false, "10:05", "09:00", "10:00", "", "11:00", "10:00", 2},
		{"never seen, created in the future of its slots", catalog.SchedState{}, "a", "10:01", false, "10:05", "09:00", "", "", "11:00", "10:01", 1},
		{"changed: from now, no catch-up", catalog.SchedState{Fingerprint: "old", Last: at("06:00")}, "a", "05:00", false, "10:05", "09:00", "", "", "11:00", "10:05", 1},
		{"disabled: recorded, nothing runs", catalog.SchedState{Fingerprint: "old", Last: at("06:00")}, "a", "05:00", true, "10:05", "09:00", "", "", "", "10:05", 1},
		{"one run due on time", catalog.SchedState{Fingerprint: "a", Last: at("09:00")}, "a", "05:00", false, "10:00", "09:00", "10:00", "", "11:00", "10:00", 1},
		{"three due: one catch-up run", catalog.SchedState{Fingerprint: "a", Last: at("07:00")}, "a", "05:00", false, "10:30", "10:20", "10:00", "3 scheduled run(s) were missed", "11:00", "10:00", 1},
		{"one due before the daemon started: a catch-up", catalog.SchedState{Fingerprint: "a", Last: at("09:00")}, "a", "05:00", false, "10:30", "10:20", "10:00", "1 scheduled run(s) were missed", "11:00", "10:00", 1},
		{"nothing due", catalog.SchedState{Fingerprint: "a", Last: at("10:00")}, "a", "05:00", false, "10:30", "09:00", "", "", "11:00", "10:00", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sc := Schedule{Fingerprint: tc.fp, Created: at(tc.created), Enabled: !tc.disabled, Runs: hourly}
			puts := 0
			var last catalog.SchedState
			put := func(st catalog.SchedState) error { puts++; last = st; return nil }
			d, err := sc.Tick(tc.st, at(tc.now), at(tc.started), put)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantSlot == "" != d.Slot.IsZero() || tc.wantSlot != "" && !d.Slot.Equal(at(tc.wantSlot)) {
				t.Errorf("slot %v, want %q", d.Slot, tc.wantSlot)
			}
			if tc.wantNote == "" && d.Note != "" || !strings.Contains(d.Note, tc.wantNote) {
				t.Errorf("note %q, want %q", d.Note, tc.wantNote)
			}
			if tc.wantNext == "" != d.Next.IsZero() || tc.wantNext != "" && !d.Next.Equal(at(tc.wantNext)) {
				t.Errorf("next %v, want %q", d.Next, tc.wantNext)
			}
			if puts != tc.wantPuts {
				t.Errorf("%d puts, want %d", puts, tc.wantPuts)
			}
			if puts > 0 && (!last.Last.Equal(at(tc.wantLast)) || last.Fingerprint != tc.fp) {
				t.Errorf("recorded %+v, want last %s fingerprint %s", last, tc.wantLast, tc.fp)
			}
		})
	}
}
