package catalog

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ErrInvalid marks a request the caller must correct; the API maps it to
// 400.
var ErrInvalid = errors.New("invalid")

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

var (
	policyNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)
	// Names that become FUSE paths and NBD export names: no separators,
	// no leading dot, bounded length.
	objectNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	diskNameRE   = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)
	timeRE       = regexp.MustCompile(`^([01][0-9]|2[0-3]):([0-5][0-9])$`)
)

// ValidateName checks a project, server, token or backup name.
func ValidateName(kind, name string) error {
	if !objectNameRE.MatchString(name) {
		return invalidf("%s name %q: want 1-64 of [A-Za-z0-9_.-], starting with a letter or digit", kind, name)
	}
	return refuseIDLike(kind, name)
}

// LooksLikeID reports whether name has the form NewID gives ids of any
// kind (a prefix such as "bk-" and 12 hex digits), in any letter case.
func LooksLikeID(name string) bool {
	for _, prefix := range idPrefix {
		if len(name) != len(prefix)+12 || !strings.EqualFold(name[:len(prefix)], prefix) {
			continue
		}
		hex := true
		for _, c := range name[len(prefix):] {
			hex = hex && (c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')
		}
		if hex {
			return true
		}
	}
	return false
}

// refuseIDLike keeps names out of the id space: lookups try a reference
// as an id first, so a backup named like another backup's id would make
// "backup rm NAME" delete that other backup.
func refuseIDLike(kind, name string) error {
	if LooksLikeID(name) {
		return invalidf("%s name %q looks like an object id (prj-, tok-, srv-, pol-, bk-, job- or rst- and 12 hex digits), which would clash with id lookups; choose another name", kind, name)
	}
	return nil
}

// ValidateDiskName checks a disk name such as vda.
func ValidateDiskName(name string) error {
	if !diskNameRE.MatchString(name) {
		return invalidf("disk name %q: want a lowercase name like vda (1-16 of [a-z0-9], starting with a letter)", name)
	}
	return nil
}

// ValidateBackupName checks a user-chosen backup name. The prefixes of
// generated names are reserved so that a name tells how a backup was made.
func ValidateBackupName(name string) error {
	if err := ValidateName("backup", name); err != nil {
		return err
	}
	if strings.HasPrefix(name, "autobk_") || strings.HasPrefix(name, "manualbk_") {
		return invalidf("backup name %q: the prefixes autobk_ and manualbk_ are reserved for generated names", name)
	}
	return nil
}

var weekdayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWeekday maps mon..sun (or full names) to time.Weekday.
func ParseWeekday(s string) (time.Weekday, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for i, w := range weekdayNames {
		if s == w || (len(s) > 3 && strings.HasPrefix(time.Weekday(i).String(), strings.ToUpper(s[:1])+s[1:])) {
			return time.Weekday(i), nil
		}
	}
	return 0, invalidf("weekday %q: want mon, tue, wed, thu, fri, sat or sun", s)
}

// ParseClock parses HH:MM into minutes after midnight.
func ParseClock(s string) (int, error) {
	m := timeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, invalidf("execution time %q: want HH:MM from 00:00 to 23:59", s)
	}
	return int(m[1][0]-'0')*600 + int(m[1][1]-'0')*60 + int(m[2][0]-'0')*10 + int(m[2][1]-'0'), nil
}

// Retention bounds, as in the CSBS API.
const (
	MaxRetention = 99999
	MaxLongTerm  = 100
)

// NormalizePolicy checks a policy and puts it in canonical form (sorted
// times and weekdays, -1 for unset retention). It is the single place the
// policy rules live.
func NormalizePolicy(p *Policy) error {
	if !policyNameRE.MatchString(p.Name) {
		return invalidf("policy name %q: want 1-255 of [A-Za-z0-9_-]", p.Name)
	}
	if err := refuseIDLike("policy", p.Name); err != nil {
		return err
	}
	if len(p.Times) == 0 {
		return invalidf("policy %s: at least one execution time (--time HH:MM)", p.Name)
	}
	if len(p.Times) > 24 {
		return invalidf("policy %s: at most 24 execution times a day, got %d", p.Name, len(p.Times))
	}
	mins := make([]int, 0, len(p.Times))
	for _, t := range p.Times {
		m, err := ParseClock(t)
		if err != nil {
			return err
		}
		mins = append(mins, m)
	}
	slices.Sort(mins)
	for i := range mins {
		// Times are at least an hour apart, also across midnight.
		next := mins[(i+1)%len(mins)]
		gap := next - mins[i]
		if i == len(mins)-1 {
			gap += 24 * 60
		}
		if len(mins) > 1 && gap < 60 {
			return invalidf("policy %s: execution times %s and %s are less than 1 hour apart", p.Name, clock(mins[i]), clock(next))
		}
	}
	p.Times = p.Times[:0]
	for _, m := range mins {
		p.Times = append(p.Times, clock(m))
	}
	switch p.Period {
	case PeriodDays:
		if p.EveryN < 1 || p.EveryN > 30 {
			return invalidf("policy %s: --every-days %d: want 1..30", p.Name, p.EveryN)
		}
		p.Weekdays = nil
	case PeriodWeekdays:
		if len(p.Weekdays) == 0 {
			return invalidf("policy %s: --weekdays needs at least one day", p.Name)
		}
		days := map[time.Weekday]bool{}
		for _, w := range p.Weekdays {
			d, err := ParseWeekday(w)
			if err != nil {
				return err
			}
			days[d] = true
		}
		p.Weekdays = p.Weekdays[:0]
		for d := time.Sunday; d <= time.Saturday; d++ {
			if days[d] {
				p.Weekdays = append(p.Weekdays, weekdayNames[d])
			}
		}
		p.EveryN = 0
	default:
		return invalidf("policy %s: give a period: --every-days N or --weekdays mon,thu", p.Name)
	}
	if p.Timezone == "" {
		p.Timezone = "UTC"
	}
	if _, err := time.LoadLocation(p.Timezone); err != nil {
		return invalidf("policy %s: unknown timezone %q", p.Name, p.Timezone)
	}
	if p.MaxBackups == 0 {
		p.MaxBackups = -1
	}
	if p.RetentionDays == 0 {
		p.RetentionDays = -1
	}
	if p.MaxBackups != -1 && (p.MaxBackups < 1 || p.MaxBackups > MaxRetention) {
		return invalidf("policy %s: max_backups %d: want 1..%d (or unset)", p.Name, p.MaxBackups, MaxRetention)
	}
	if p.RetentionDays != -1 && (p.RetentionDays < 1 || p.RetentionDays > MaxRetention) {
		return invalidf("policy %s: retention_days %d: want 1..%d (or unset)", p.Name, p.RetentionDays, MaxRetention)
	}
	if p.MaxBackups != -1 && p.RetentionDays != -1 {
		return invalidf("policy %s: set --max-backups or --retention-days, not both", p.Name)
	}
	for name, v := range map[string]int{"keep-daily": p.KeepDaily, "keep-weekly": p.KeepWeekly, "keep-monthly": p.KeepMonthly, "keep-yearly": p.KeepYearly} {
		if v < 0 || v > MaxLongTerm {
			return invalidf("policy %s: --%s %d: want 0..%d", p.Name, name, v, MaxLongTerm)
		}
	}
	if p.HasLongTerm() && p.MaxBackups == -1 {
		// CSBS applies long-term retention together with the count rule.
		return invalidf("policy %s: long-term retention (--keep-*) goes with --max-backups", p.Name)
	}
	return nil
}

func clock(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }
