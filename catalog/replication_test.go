package catalog

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestNormalizeReplication(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*Replication)
		errHas string
		check  func(t *testing.T, r Replication)
	}{
		{name: "defaults: every day, UTC, the newest backup", mod: func(*Replication) {}, check: func(t *testing.T, r Replication) {
			if r.Period != PeriodDays || r.EveryN != 1 || r.Timezone != "UTC" || r.Last != 1 {
				t.Fatalf("defaults: %+v", r)
			}
		}},
		{name: "times sorted", mod: func(r *Replication) { r.Times = []string{"13:00", "01:00"} }, check: func(t *testing.T, r Replication) {
			if !reflect.DeepEqual(r.Times, []string{"01:00", "13:00"}) {
				t.Fatalf("times %v", r.Times)
			}
		}},
		{name: "weekdays", mod: func(r *Replication) { r.Period, r.Weekdays = PeriodWeekdays, []string{"sun", "wed"} }, check: func(t *testing.T, r Replication) {
			if !reflect.DeepEqual(r.Weekdays, []string{"sun", "wed"}) || r.EveryN != 0 {
				t.Fatalf("weekdays %+v", r)
			}
		}},
		{name: "no time", mod: func(r *Replication) { r.Times = nil }, errHas: "replication dr: at least one execution time"},
		{name: "times too close", mod: func(r *Replication) { r.Times = []string{"01:00", "01:30"} }, errHas: "replication dr: execution times 01:00 and 01:30 are less than 1 hour apart"},
		{name: "bad name", mod: func(r *Replication) { r.Name = "a b" }, errHas: `replication name "a b"`},
		{name: "bad timezone", mod: func(r *Replication) { r.Timezone = "Mars/Base" }, errHas: `unknown timezone "Mars/Base"`},
		{name: "last too big", mod: func(r *Replication) { r.Last = MaxReplicationLast + 1 }, errHas: "--last 1001: want 1..1000"},
		{name: "last negative", mod: func(r *Replication) { r.Last = -2 }, errHas: "--last -2"},
		{name: "negative rate", mod: func(r *Replication) { r.Rate = -1 }, errHas: "--rate -1"},
		{name: "keep every replica by default", mod: func(r *Replication) { r.Last = 3 }, check: func(t *testing.T, r Replication) {
			if r.Keep != 0 {
				t.Fatalf("keep %d", r.Keep)
			}
		}},
		{name: "keep as many as a run copies", mod: func(r *Replication) { r.Last, r.Keep = 3, 3 }},
		{name: "keep fewer than a run copies", mod: func(r *Replication) { r.Last, r.Keep = 3, 2 }, errHas: "--keep 2: want 0 (keep every replica) or 3..1000 (at least --last)"},
		{name: "keep negative", mod: func(r *Replication) { r.Keep = -1 }, errHas: "--keep -1"},
		{name: "keep too many", mod: func(r *Replication) { r.Keep = MaxReplicationLast + 1 }, errHas: "--keep 1001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Replication{Name: "dr", Times: []string{"03:00"}}
			tc.mod(&r)
			err := NormalizeReplication(&r)
			if tc.errHas != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("got %v, want an invalid error with %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func TestNormalizeRemoteURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://10.0.0.5:8443", "https://10.0.0.5:8443"},
		{"https://dc1.example.com:8443/", "https://dc1.example.com:8443"},
		{" https://[::1]:8443 ", "https://[::1]:8443"},
		{"http://10.0.0.5:8443", ""},
		{"https://10.0.0.5", ""},
		{"https://10.0.0.5:8443/v1", ""},
		{"https://user:pw@10.0.0.5:8443", ""},
		{"https://10.0.0.5:8443?x=1", ""},
		{"10.0.0.5:8443", ""},
		{"", ""},
	} {
		got, err := NormalizeRemoteURL(tc.in)
		if got != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("NormalizeRemoteURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
