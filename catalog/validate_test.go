package catalog

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestNormalizePolicy(t *testing.T) {
	base := func() Policy {
		return Policy{Name: "daily", Times: []string{"02:00"}, Period: PeriodDays, EveryN: 1, MaxBackups: 7}
	}
	cases := []struct {
		name   string
		mod    func(*Policy)
		errHas string
		check  func(t *testing.T, p Policy)
	}{
		{name: "minimal", mod: func(p *Policy) {}, check: func(t *testing.T, p Policy) {
			if p.Timezone != "UTC" || p.RetentionDays != -1 {
				t.Fatalf("defaults: %+v", p)
			}
		}},
		{name: "keep forever", mod: func(p *Policy) { p.MaxBackups = 0 }, check: func(t *testing.T, p Policy) {
			if p.MaxBackups != -1 || p.RetentionDays != -1 {
				t.Fatalf("keep forever: %+v", p)
			}
		}},
		{name: "times sorted", mod: func(p *Policy) { p.Times = []string{"14:00", "02:00", "08:30"} }, check: func(t *testing.T, p Policy) {
			if !reflect.DeepEqual(p.Times, []string{"02:00", "08:30", "14:00"}) {
				t.Fatalf("times %v", p.Times)
			}
		}},
		{name: "weekdays canonical", mod: func(p *Policy) { p.Period, p.Weekdays = PeriodWeekdays, []string{"thu", "Mon", "monday"} }, check: func(t *testing.T, p Policy) {
			if !reflect.DeepEqual(p.Weekdays, []string{"mon", "thu"}) {
				t.Fatalf("weekdays %v", p.Weekdays)
			}
		}},
		{name: "timezone", mod: func(p *Policy) { p.Timezone = "Asia/Shanghai" }},
		{name: "24 times an hour apart", mod: func(p *Policy) {
			p.Times = nil
			for h := range 24 {
				p.Times = append(p.Times, clock(h*60))
			}
		}},
		{name: "bad name", mod: func(p *Policy) { p.Name = "no spaces" }, errHas: "policy name"},
		{name: "long name", mod: func(p *Policy) { p.Name = strings.Repeat("a", 256) }, errHas: "policy name"},
		{name: "25:00", mod: func(p *Policy) { p.Times = []string{"25:00"} }, errHas: `"25:00"`},
		{name: "12:60", mod: func(p *Policy) { p.Times = []string{"12:60"} }, errHas: `"12:60"`},
		{name: "2:00", mod: func(p *Policy) { p.Times = []string{"2:00"} }, errHas: `"2:00"`},
		{name: "no time", mod: func(p *Policy) { p.Times = nil }, errHas: "at least one execution time"},
		{name: "less than an hour apart", mod: func(p *Policy) { p.Times = []string{"02:00", "02:30"} }, errHas: "less than 1 hour"},
		{name: "across midnight", mod: func(p *Policy) { p.Times = []string{"23:30", "00:10"} }, errHas: "less than 1 hour"},
		{name: "25 times", mod: func(p *Policy) {
			for range 25 {
				p.Times = append(p.Times, "01:00")
			}
		}, errHas: "at most 24"},
		{name: "no period", mod: func(p *Policy) { p.Period = "" }, errHas: "give a period"},
		{name: "every 0 days", mod: func(p *Policy) { p.EveryN = 0 }, errHas: "--every-days 0"},
		{name: "bad weekday", mod: func(p *Policy) { p.Period, p.Weekdays = PeriodWeekdays, []string{"funday"} }, errHas: `"funday"`},
		{name: "no weekdays", mod: func(p *Policy) { p.Period = PeriodWeekdays }, errHas: "at least one day"},
		{name: "unknown timezone", mod: func(p *Policy) { p.Timezone = "Mars/Olympus" }, errHas: `unknown timezone "Mars/Olympus"`},
		{name: "both retentions", mod: func(p *Policy) { p.RetentionDays = 30 }, errHas: "not both"},
		{name: "max backups too big", mod: func(p *Policy) { p.MaxBackups = 100000 }, errHas: "max_backups 100000"},
		{name: "negative retention", mod: func(p *Policy) { p.MaxBackups, p.RetentionDays = -1, -5 }, errHas: "retention_days -5"},
		{name: "keep daily 101", mod: func(p *Policy) { p.KeepDaily = 101 }, errHas: "--keep-daily 101"},
		{name: "long-term without count", mod: func(p *Policy) { p.MaxBackups, p.RetentionDays, p.KeepWeekly = -1, 30, 4 }, errHas: "goes with --max-backups"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mod(&p)
			err := NormalizePolicy(&p)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("got %v, want invalid error with %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"web1", "db-01", "a", "A.b_c"} {
		if err := ValidateName("server", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".hidden", "a/b", "a b", "..", strings.Repeat("x", 65), "tab\t", "ünï"} {
		if err := ValidateName("server", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := ValidateBackupName("autobk_1234"); err == nil {
		t.Error("reserved prefix accepted")
	}
	for _, bad := range []string{"VDA", "1vd", "vd/a", ""} {
		if err := ValidateDiskName(bad); err == nil {
			t.Errorf("disk %q accepted", bad)
		}
	}
}

// Names of the id form would shadow ids in lookups (ids win), so every
// named object refuses them; near misses stay valid names.
func TestIDLikeNames(t *testing.T) {
	validators := map[string]func(name string) error{
		"project": func(n string) error { return ValidateName("project", n) },
		"server":  func(n string) error { return ValidateName("server", n) },
		"token":   func(n string) error { return ValidateName("token", n) },
		"backup":  ValidateBackupName,
		"policy": func(n string) error {
			p := Policy{Name: n, Times: []string{"02:00"}, Period: PeriodDays, EveryN: 1, MaxBackups: 7}
			return NormalizePolicy(&p)
		},
	}
	cases := []struct {
		name  string
		refer string // "" = a valid name
	}{
		{name: "bk-b3b682482270", refer: "looks like an object id"},
		{name: "prj-000000000000", refer: "looks like an object id"},
		{name: "tok-abcdefabcdef", refer: "looks like an object id"},
		{name: "srv-0123456789ab", refer: "looks like an object id"},
		{name: "pol-ffffffffffff", refer: "looks like an object id"},
		{name: "job-123456abcdef", refer: "looks like an object id"},
		{name: "rst-a1b2c3d4e5f6", refer: "looks like an object id"},
		{name: "BK-B3B682482270", refer: "looks like an object id"},
		{name: "bk-b3b68248227"},     // 11 hex digits
		{name: "bk-b3b6824822700"},   // 13
		{name: "bk-b3b68248227g"},    // not hex
		{name: "bkp-b3b682482270"},   // not a prefix
		{name: "web-0123456789ab"},   // not a prefix
		{name: "bk_b3b682482270"},    // underscore
		{name: "srv-0123456789ab-2"}, // longer
	}
	for kind, validate := range validators {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				err := validate(tc.name)
				if tc.refer == "" {
					if err != nil {
						t.Fatalf("valid name refused: %v", err)
					}
					return
				}
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.refer) || !strings.Contains(err.Error(), kind+" name") {
					t.Fatalf("got %v, want an invalid error naming the %s and saying %q", err, kind, tc.refer)
				}
			})
		}
	}
	// Every id NewID makes is refused as a name.
	for kind := range idPrefix {
		id := NewID(kind)
		if err := ValidateName("server", id); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s id %s accepted as a name: %v", kind, id, err)
		}
	}
}
