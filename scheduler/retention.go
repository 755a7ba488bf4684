package scheduler

import (
	"fmt"
	"slices"
	"time"

	"csbs/catalog"
)

// Retention verdicts.
const (
	VerdictKeep     = "keep"
	VerdictDelete   = "delete"
	VerdictDeferred = "deferred" // would be deleted, but is in use: pruned once free
)

// RetentionItem is one backup's fate under a policy.
type RetentionItem struct {
	BackupID string    `json:"backup_id"`
	Name     string    `json:"name"`
	ServerID string    `json:"server_id"`
	Created  time.Time `json:"created"`
	Verdict  string    `json:"verdict"`
	Reason   string    `json:"reason"`
}

// Retain decides which of one server's backups a policy keeps. Only
// automatic, unprotected backups are candidates; manual and protected
// backups are always kept. Rules (CSBS):
//
//   - max_backups N: keep the newest N;
//   - retention_days D: keep those younger than D days;
//   - neither: keep all;
//   - long-term keep_daily/weekly/monthly/yearly, applied together with
//     the count rule: also keep the newest backup of each of the last N
//     days/weeks/months/years that have backups (in the policy's zone).
//
// A backup to delete that inUse reports busy is "deferred".
func Retain(p catalog.Policy, backups []catalog.Backup, now time.Time, inUse func(id string) bool) []RetentionItem {
	bs := slices.Clone(backups)
	slices.SortFunc(bs, func(a, b catalog.Backup) int { return b.Created.Compare(a.Created) })
	loc, err := time.LoadLocation(p.Timezone)
	if err != nil {
		loc = time.UTC
	}
	keepReason := map[string]string{}
	var candidates []catalog.Backup
	for _, b := range bs {
		switch {
		case b.Replica != nil:
			// Whatever server id and trigger the remote gave it, a
			// replica is its replication policy's to keep (--keep).
			keepReason[b.ID] = "replicas are kept by their replication policy"
		case b.Trigger != catalog.TriggerAuto:
			keepReason[b.ID] = "manual backups are kept until deleted"
		case b.Protected:
			keepReason[b.ID] = "protected"
		default:
			candidates = append(candidates, b)
		}
	}
	switch {
	case p.MaxBackups > 0:
		for i, b := range candidates {
			if i < p.MaxBackups {
				keepReason[b.ID] = fmt.Sprintf("among the newest %d automatic backups", p.MaxBackups)
			}
		}
	case p.RetentionDays > 0:
		cutoff := now.Add(-time.Duration(p.RetentionDays) * 24 * time.Hour)
		for _, b := range candidates {
			if !b.Created.Before(cutoff) {
				keepReason[b.ID] = fmt.Sprintf("younger than %d days", p.RetentionDays)
			}
		}
	default:
		for _, b := range candidates {
			keepReason[b.ID] = "the policy keeps backups forever"
		}
	}
	longTerm := []struct {
		n      int
		name   string
		bucket func(time.Time) string
	}{
		{p.KeepDaily, "day", func(t time.Time) string { return t.Format("2006-01-02") }},
		{p.KeepWeekly, "week", func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{p.KeepMonthly, "month", func(t time.Time) string { return t.Format("2006-01") }},
		{p.KeepYearly, "year", func(t time.Time) string { return t.Format("2006") }},
	}
	for _, lt := range longTerm {
		seen := map[string]bool{}
		for _, b := range candidates { // newest first
			if len(seen) >= lt.n {
				break
			}
			k := lt.bucket(b.Created.In(loc))
			if seen[k] {
				continue
			}
			seen[k] = true
			if _, kept := keepReason[b.ID]; !kept {
				keepReason[b.ID] = fmt.Sprintf("newest of its %s %s (long-term retention)", lt.name, k)
			}
		}
	}
	out := make([]RetentionItem, 0, len(bs))
	for _, b := range bs {
		it := RetentionItem{BackupID: b.ID, Name: b.Name, ServerID: b.ServerID, Created: b.Created}
		if r, ok := keepReason[b.ID]; ok {
			it.Verdict, it.Reason = VerdictKeep, r
		} else if inUse != nil && inUse(b.ID) {
			it.Verdict, it.Reason = VerdictDeferred, "outside the retention rules but in use by a restore, export or mount; pruned once free"
		} else {
			it.Verdict, it.Reason = VerdictDelete, "outside the retention rules"
		}
		out = append(out, it)
	}
	return out
}
