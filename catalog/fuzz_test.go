package catalog

import (
	"strings"
	"testing"
)

func FuzzNames(f *testing.F) {
	for _, s := range []string{"web1", "../x", ".hidden", "a/b", "manualbk_1", "vda", "daily", "02:00", "mon"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName("server", s) == nil {
			// Names become FUSE path parts and NBD export name parts.
			if strings.ContainsAny(s, "/\x00") || strings.HasPrefix(s, ".") || len(s) > 64 {
				t.Fatalf("accepted unsafe name %q", s)
			}
		}
		_ = ValidateBackupName(s)
		if ValidateDiskName(s) == nil && strings.ContainsAny(s, "/.") {
			t.Fatalf("accepted unsafe disk name %q", s)
		}
		_, _ = ParseClock(s)
		_, _ = ParseWeekday(s)
		p := Policy{Name: s, Times: []string{s}, Period: PeriodWeekdays, Weekdays: []string{s}, Timezone: s}
		_ = NormalizePolicy(&p)
	})
}
