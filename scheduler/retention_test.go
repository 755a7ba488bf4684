package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"csbs/catalog"
)

func TestRetain(t *testing.T) {
	now := time.Date(2026, 6, 30, 12, 0, 0, 0, time.UTC)
	// auto backups a0..a(n-1), a0 newest, one a day at 02:00 UTC.
	autos := func(n int) []catalog.Backup {
		var bs []catalog.Backup
		for i := range n {
			bs = append(bs, catalog.Backup{ID: fmt.Sprintf("a%d", i), Name: fmt.Sprintf("a%d", i), Trigger: catalog.TriggerAuto,
				Created: time.Date(2026, 6, 30, 2, 0, 0, 0, time.UTC).AddDate(0, 0, -i)})
		}
		return bs
	}
	manual := catalog.Backup{ID: "m", Name: "m", Trigger: catalog.TriggerManual, Created: now.AddDate(-1, 0, 0)}
	protected := catalog.Backup{ID: "p", Name: "p", Trigger: catalog.TriggerAuto, Protected: true, Created: now.AddDate(-1, 0, 0)}
	// A replica whose remote gave it a local server's id, trigger auto and
	// the newest time: not the policy's to count or delete.
	replica := catalog.Backup{ID: "r", Name: "r", Trigger: catalog.TriggerAuto, Created: now, Replica: &catalog.ReplicaOrigin{RemoteID: "rmt-1"}}
	pol := func(maxB, days int) catalog.Policy {
		return catalog.Policy{MaxBackups: maxB, RetentionDays: days, Timezone: "UTC"}
	}
	cases := []struct {
		name    string
		policy  catalog.Policy
		backups []catalog.Backup
		busy    []string
		deleted string // ids deleted, space separated, in newest-first order
		defer_  string
	}{
		{name: "count keeps newest", policy: pol(3, -1), backups: autos(5), deleted: "a3 a4"},
		{name: "a replica neither counts nor goes", policy: pol(3, -1), backups: append(autos(5), replica), deleted: "a3 a4"},
		{name: "count larger than backups", policy: pol(10, -1), backups: autos(5), deleted: ""},
		{name: "days", policy: pol(-1, 3), backups: autos(6), deleted: "a3 a4 a5"},
		{name: "forever", policy: pol(-1, -1), backups: autos(6), deleted: ""},
		{name: "manual and protected never pruned, not counted", policy: pol(2, -1), backups: append(autos(4), manual, protected), deleted: "a2 a3"},
		{name: "busy backup deferred", policy: pol(2, -1), backups: autos(4), busy: []string{"a3"}, deleted: "a2", defer_: "a3"},
		{name: "order of input does not matter", policy: pol(2, -1), backups: reversed(autos(4)), deleted: "a2 a3"},
		{
			name: "long-term weekly with count",
			// 40 daily backups; keep 3 plus the newest of each of the last 4 ISO weeks.
			policy:  catalog.Policy{MaxBackups: 3, RetentionDays: -1, KeepWeekly: 4, Timezone: "UTC"},
			backups: autos(40),
			// 2026-06-30 is a Tuesday; week starts (Mon) 29 Jun, 22 Jun, 15 Jun, 8 Jun.
			// Newest of W27 = a0 (kept by count), W26 = a2 (28 Jun, count), W25 = a9 (21 Jun), W24 = a16 (14 Jun).
			deleted: except(40, "a0", "a1", "a2", "a9", "a16"),
		},
		{
			name:    "long-term monthly and yearly",
			policy:  catalog.Policy{MaxBackups: 1, RetentionDays: -1, KeepMonthly: 2, KeepYearly: 1, Timezone: "UTC"},
			backups: autos(70), // back to 22 April
			// Newest of June = a0, of May = a30 (31 May); yearly 2026 = a0.
			deleted: except(70, "a0", "a30"),
		},
		{
			name: "long-term buckets use the policy's zone",
			// x0 30 Jun 05:00 UTC = 30 Jun 01:00 in New York; x1 30 Jun 03:00 UTC =
			// 29 Jun 23:00 NY; x2 29 Jun 05:00 UTC = 29 Jun 01:00 NY. By NY days
			// the newest of 29 Jun is x1; by UTC days it would be x2.
			policy: catalog.Policy{MaxBackups: 1, RetentionDays: -1, KeepDaily: 2, Timezone: "America/New_York"},
			backups: []catalog.Backup{
				{ID: "x0", Trigger: catalog.TriggerAuto, Created: time.Date(2026, 6, 30, 5, 0, 0, 0, time.UTC)},
				{ID: "x1", Trigger: catalog.TriggerAuto, Created: time.Date(2026, 6, 30, 3, 0, 0, 0, time.UTC)},
				{ID: "x2", Trigger: catalog.TriggerAuto, Created: time.Date(2026, 6, 29, 5, 0, 0, 0, time.UTC)},
			},
			deleted: "x2",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			items := Retain(tc.policy, tc.backups, now, func(id string) bool { return slices.Contains(tc.busy, id) })
			if len(items) != len(tc.backups) {
				t.Fatalf("%d verdicts for %d backups", len(items), len(tc.backups))
			}
			var del, def []string
			for _, it := range items {
				switch it.Verdict {
				case VerdictDelete:
					del = append(del, it.BackupID)
				case VerdictDeferred:
					def = append(def, it.BackupID)
				}
				if it.Reason == "" {
					t.Errorf("%s: no reason", it.BackupID)
				}
			}
			if got := strings.Join(del, " "); got != tc.deleted {
				t.Fatalf("deleted %q, want %q", got, tc.deleted)
			}
			if got := strings.Join(def, " "); got != tc.defer_ {
				t.Fatalf("deferred %q, want %q", got, tc.defer_)
			}
		})
	}
}

func reversed(bs []catalog.Backup) []catalog.Backup {
	slices.Reverse(bs)
	return bs
}

// except lists a0..a(n-1) without the kept ones.
func except(n int, kept ...string) string {
	var out []string
	for i := range n {
		id := fmt.Sprintf("a%d", i)
		if !slices.Contains(kept, id) {
			out = append(out, id)
		}
	}
	return strings.Join(out, " ")
}
