package scheduler_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testdaemon"
	"csbs/scheduler"
)

func TestJobRetentionRule(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	r := scheduler.JobRetention{Keep: 30 * day, KeepFailed: 90 * day, KeepLast: 2}
	job := func(state string, age time.Duration) catalog.JobSummary {
		return catalog.JobSummary{ID: "job-x", Kind: catalog.JobBackup, State: state, Created: now.Add(-age - time.Minute), Ended: now.Add(-age)}
	}
	cases := []struct {
		name    string
		r       scheduler.JobRetention
		job     catalog.JobSummary
		rank    int
		expired bool
	}{
		{"young succeeded", r, job(catalog.JobSucceeded, day), 5, false},
		{"old succeeded", r, job(catalog.JobSucceeded, 31*day), 5, true},
		{"old succeeded among the newest kept", r, job(catalog.JobSucceeded, 31*day), 1, false},
		{"old succeeded just past the newest kept", r, job(catalog.JobSucceeded, 31*day), 2, true},
		{"failed past keep, within keep_failed", r, job(catalog.JobFailed, 31*day), 5, false},
		{"failed past keep_failed", r, job(catalog.JobFailed, 91*day), 5, true},
		{"canceled counts as finished", r, job(catalog.JobCanceled, 31*day), 5, true},
		{"skipped counts as finished", r, job(catalog.JobSkipped, 31*day), 5, true},
		{"running never", r, job(catalog.JobRunning, 365*day), 5, false},
		{"queued never", r, job(catalog.JobQueued, 365*day), 5, false},
		{"keep 0 keeps forever", scheduler.JobRetention{KeepLast: 0}, job(catalog.JobSucceeded, 3650*day), 9, false},
		{"keep_failed 0 keeps failed forever", scheduler.JobRetention{Keep: day}, job(catalog.JobFailed, 3650*day), 9, false},
		{"no end: age from creation", r, catalog.JobSummary{State: catalog.JobSkipped, Created: now.Add(-31 * day)}, 5, true},
	}
	for _, tc := range cases {
		if got := tc.r.Expired(tc.job, tc.rank, now); got != tc.expired {
			t.Errorf("%s: expired %v, want %v", tc.name, got, tc.expired)
		}
	}
}

// TestPruneJobs prunes a catalog of jobs of every kind, state and age in
// several batches, and compares the survivors with the rule applied to
// each job; the indexes and counters stay in step.
func TestPruneJobs(t *testing.T) {
	s, err := blockstore.Open(filepath.Join(t.TempDir(), "store"), blockstore.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cat := catalog.New(s.KV(), catalog.Options{})
	if _, err := cat.EnsureIndexes(); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	states := []string{catalog.JobSucceeded, catalog.JobFailed, catalog.JobCanceled, catalog.JobSkipped, catalog.JobRunning}
	var all []catalog.Job
	err = cat.Update(func(tx *catalog.Txn) error {
		for i := range 1500 {
			j := catalog.Job{ID: fmt.Sprintf("job-%012d", i), Project: "prj-1", Kind: catalog.JobKinds()[i%3], State: states[i%len(states)],
				Created: now.Add(-time.Duration(i) * 3 * time.Hour)}
			if j.Finished() {
				j.Ended = j.Created.Add(time.Hour)
			}
			all = append(all, j)
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := scheduler.JobRetention{Keep: 30 * 24 * time.Hour, KeepFailed: 90 * 24 * time.Hour, KeepLast: 20}
	var want []string
	rank := map[string]int{}
	for _, j := range all { // newest first already
		keep := !j.Finished()
		if j.Finished() {
			keep = !r.Expired(catalog.JobSummary{ID: j.ID, Kind: j.Kind, State: j.State, Created: j.Created, Ended: j.Ended}, rank[j.Kind], now)
			rank[j.Kind]++
		}
		if keep {
			want = append(want, j.ID)
		}
	}
	n, err := scheduler.PruneJobs(cat, r, now)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(all)-len(want) || n <= 500 {
		t.Fatalf("pruned %d jobs, want %d (more than one batch)", n, len(all)-len(want))
	}
	var got []string
	var counts map[[2]string]int64
	err = cat.View(func(tx *catalog.Txn) error {
		js, err := tx.Jobs("")
		for _, j := range js {
			got = append(got, j.ID)
		}
		counts, _ = tx.JobCounts()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("survivors differ from the rule:\n got %v\nwant %v", got, want)
	}
	var total int64
	for _, c := range counts {
		total += c
	}
	if total != int64(len(want)) {
		t.Fatalf("job counters say %d, %d jobs kept", total, len(want))
	}
	if err := cat.Check(); err != nil {
		t.Fatal(err)
	}
	if n, err := scheduler.PruneJobs(cat, r, now); n != 0 || err != nil {
		t.Fatalf("second pass pruned %d: %v", n, err)
	}
}

// TestJobHistoryPrunedOnFakeTime: the scheduler prunes job history at
// start and hourly, on its clock; status counts stay right across a
// restart.
func TestJobHistoryPrunedOnFakeTime(t *testing.T) {
	clock := scheduler.NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	mod := func(c *config.Config) {
		c.Jobs = config.Jobs{Keep: config.Duration(2 * time.Hour), KeepFailed: config.Duration(2 * time.Hour), KeepLast: 1}
	}
	d := testdaemon.StartIn(t, dir, clock, mod)
	c := d.Admin
	for range 3 {
		j := call[catalog.Job](t, c, "POST", "/v1/gc", nil)
		if err := c.Do(t.Context(), "POST", "/v1/jobs/"+j.ID+"/wait", nil, nil, &j); err != nil || j.State != catalog.JobSucceeded {
			t.Fatalf("gc job: %+v %v", j, err)
		}
	}
	if js := call[[]catalog.Job](t, c, "GET", "/v1/jobs", nil); len(js) != 3 {
		t.Fatalf("%d jobs before pruning", len(js))
	}
	// An hour on, the jobs are an hour old: kept.
	waitWaiters(t, clock, 1)
	clock.Advance(time.Hour)
	time.Sleep(100 * time.Millisecond)
	if js := call[[]catalog.Job](t, c, "GET", "/v1/jobs", nil); len(js) != 3 {
		t.Fatalf("%d jobs after an hour", len(js))
	}
	// Two more hours: past keep; the newest stays (keep_last = 1).
	waitWaiters(t, clock, 1)
	clock.Advance(2 * time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for {
		js := call[[]catalog.Job](t, c, "GET", "/v1/jobs", nil)
		if len(js) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs after pruning, want 1", len(js))
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := call[api.Status](t, c, "GET", "/v1/status", nil)
	d.Stop(t)
	d = testdaemon.StartIn(t, dir, clock, mod)
	st2 := call[api.Status](t, d.Admin, "GET", "/v1/status", nil)
	if st2.LastGC == nil || st.LastGC == nil || st2.LastGC.ID != st.LastGC.ID || st2.Store.Backups != st.Store.Backups {
		t.Fatalf("status after a restart: %+v, before %+v", st2, st)
	}
}
