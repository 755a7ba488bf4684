package scheduler

import (
	"cmp"
	"time"

	"csbs/catalog"
	"csbs/config"
)

// NextMaintenance returns when a gc or scrub configured as p runs next
// after now, and false when it runs only by hand. A daily wall time
// follows the policies' rules (NextRuns): a time skipped by DST runs at
// the first valid minute after it, a time that occurs twice runs once, at
// the first occurrence. p must have passed config validation.
func NextMaintenance(p config.Periodic, now time.Time) (time.Time, bool) {
	if p.Every > 0 {
		return now.Add(time.Duration(p.Every)), true
	}
	if p.Schedule == "" {
		return time.Time{}, false
	}
	daily := catalog.Policy{
		Name: "maintenance", Times: []string{p.Schedule}, Period: catalog.PeriodDays, EveryN: 1,
		Timezone: cmp.Or(p.Timezone, "UTC"), Created: now,
	}
	runs, err := NextRuns(daily, now, 1)
	if err != nil || len(runs) == 0 {
		return time.Time{}, false
	}
	return runs[0], true
}
