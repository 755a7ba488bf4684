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
