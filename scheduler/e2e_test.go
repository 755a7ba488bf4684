package scheduler_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"csbs/api"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
	"csbs/scheduler"
)

func call[T any](t *testing.T, c *api.Client, method, path string, in any) T {
	t.Helper()
	var out T
	if err := c.Do(context.Background(), method, path, nil, in, &out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

// settle waits (in real time, polling) until want jobs exist and all have
// ended, and returns them.
func settle(t *testing.T, c *api.Client, want int) []catalog.Job {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		jobs := call[[]catalog.Job](t, c, "GET", "/v1/jobs", nil)
		done := len(jobs) >= want
		for _, j := range jobs {
			done = done && j.Finished()
		}
		if done {
			if len(jobs) != want {
				t.Fatalf("%d jobs, want %d: %+v", len(jobs), want, jobs)
			}
			return jobs
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs did not settle at %d: %+v", want, jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func autoBackups(t *testing.T, c *api.Client, server string) []api.BackupView {
	t.Helper()
	var bs []api.BackupView
	if err := c.Do(context.Background(), "GET", "/v1/backups", map[string][]string{"server": {server}}, nil, &bs); err != nil {
		t.Fatal(err)
	}
	var out []api.BackupView
	for _, b := range bs {
		if b.Trigger == catalog.TriggerAuto {
			out = append(out, b)
		}
	}
	return out
}

func TestPoliciesRunOnFakeTime(t *testing.T) {
	clock := scheduler.NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	mod := func(c *config.Config) { c.Scheduler.MaxConcurrentJobs = 1 }
	d := testdaemon.StartIn(t, dir, clock, mod)
	c := d.Admin
	img1 := testdisk.Sparse(t, dir, 2<<20, 9000, 0)
	img2 := testdisk.Sparse(t, dir, 3<<20, 9000, 1<<20)
	gone := testdisk.Sparse(t, dir, 1<<20, 100, 0)
	for name, img := range map[string]string{"web1": img1, "web2": img2, "flaky": gone} {
		call[api.ServerView](t, c, "POST", "/v1/servers", api.AddServerRequest{Name: name, Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	}
	os.Remove(gone) // its source is unreadable from now on
	daily := "daily"
	call[api.PolicyView](t, c, "POST", "/v1/policies", api.PolicyRequest{Name: &daily, Times: []string{"02:00"}, EveryDays: ptr(1), MaxBackups: ptr(2)})
	for _, s := range []string{"web1", "web2", "flaky"} {
		call[api.ServerView](t, c, "POST", "/v1/policies/daily/bind", api.BindRequest{Server: s})
	}
	// A manual backup is never pruned by retention.
	j := call[catalog.Job](t, c, "POST", "/v1/backups", api.CreateBackupRequest{Server: "web1", Name: "keepme"})
	settle(t, c, 1)

	jobs := 1
	for day := 1; day <= 3; day++ {
		clock.Set(time.Date(2026, 6, day, 2, 0, 0, 0, time.UTC))
		jobs += 3
		js := settle(t, c, jobs)
		var failed int
		for _, j := range js[:3] {
			if j.Scheduled != time.Date(2026, 6, day, 2, 0, 0, 0, time.UTC) {
				t.Fatalf("day %d: job %s scheduled %s", day, j.ID, j.Scheduled)
			}
			if j.State == catalog.JobFailed {
				failed++
				if !strings.Contains(j.Error, "no such file") {
					t.Fatalf("failing source: %q", j.Error)
				}
			}
		}
		if failed != 1 {
			t.Fatalf("day %d: %d failed jobs, want the flaky server's one: %+v", day, failed, js[:3])
		}
		for _, s := range []string{"web1", "web2"} {
			bs := autoBackups(t, c, s)
			if want := min(day, 2); len(bs) != want {
				t.Fatalf("day %d: %s has %d automatic backups, want %d", day, s, len(bs), want)
			}
			if !bs[0].Created.Equal(time.Date(2026, 6, day, 2, 0, 0, 0, time.UTC)) || !strings.HasPrefix(bs[0].Name, "autobk_") {
				t.Fatalf("day %d: newest backup of %s: %s at %s", day, s, bs[0].Name, bs[0].Created)
			}
		}
		if bs := autoBackups(t, c, "flaky"); len(bs) != 0 {
			t.Fatalf("failed backups became visible: %+v", bs)
		}
	}
	if _, err := findBackup(c, "keepme"); err != nil {
		t.Fatalf("manual backup pruned: %v (job %s)", err, j.ID)
	}

	// Retention dry run agrees: nothing more to delete.
	plan := call[[]scheduler.RetentionItem](t, c, "POST", "/v1/policies/daily/retention-preview", nil)
	for _, it := range plan {
		if it.Verdict != scheduler.VerdictKeep {
			t.Fatalf("plan after pruning: %+v", it)
		}
	}

	// The daemon is down from day 3 03:00 to day 6 10:00: three slots are
	// missed, and one catch-up run per server happens at start-up.
	clock.Set(time.Date(2026, 6, 3, 3, 0, 0, 0, time.UTC))
	d.Stop(t)
	clock.Set(time.Date(2026, 6, 6, 10, 0, 0, 0, time.UTC))
	d = testdaemon.StartIn(t, dir, clock, mod)
	c = d.Admin
	jobs += 3
	js := settle(t, c, jobs)
	for _, j := range js[:3] {
		if !strings.Contains(j.Note, "catch-up") || !strings.Contains(j.Note, "3 scheduled run(s) were missed") {
			t.Fatalf("catch-up job note %q", j.Note)
		}
	}

	// Disabling stops new runs; enabling resumes at the next slot, without
	// catching up the slots missed while disabled.
	call[api.PolicyView](t, c, "PATCH", "/v1/policies/daily", api.PolicyRequest{Enabled: ptr(false)})
	clock.Set(time.Date(2026, 6, 7, 2, 0, 0, 0, time.UTC))
	clock.Set(time.Date(2026, 6, 8, 2, 30, 0, 0, time.UTC))
	time.Sleep(100 * time.Millisecond) // give a wrongly awake scheduler the chance to fire
	settle(t, c, jobs)
	call[api.PolicyView](t, c, "PATCH", "/v1/policies/daily", api.PolicyRequest{Enabled: ptr(true)})
	time.Sleep(100 * time.Millisecond)
	settle(t, c, jobs)
	clock.Set(time.Date(2026, 6, 9, 2, 0, 0, 0, time.UTC))
	jobs += 3
	settle(t, c, jobs)

	// Updating the time takes effect for the next run.
	call[api.PolicyView](t, c, "PATCH", "/v1/policies/daily", api.PolicyRequest{Times: []string{"05:00"}})
	clock.Set(time.Date(2026, 6, 9, 4, 59, 0, 0, time.UTC))
	time.Sleep(100 * time.Millisecond)
	settle(t, c, jobs)
	clock.Set(time.Date(2026, 6, 9, 5, 0, 0, 0, time.UTC))
	jobs += 3
	for _, j := range settle(t, c, jobs)[:3] {
		if j.Scheduled != time.Date(2026, 6, 9, 5, 0, 0, 0, time.UTC) || j.State == catalog.JobSkipped {
			t.Fatalf("run at the new time: %+v", j)
		}
	}
	// A run that cannot start within the window (the clock jumped past
	// it, as after a suspend) is skipped with the reason recorded.
	clock.Set(time.Date(2026, 6, 10, 7, 0, 0, 0, time.UTC))
	jobs += 3
	for _, j := range settle(t, c, jobs)[:3] {
		if j.State != catalog.JobSkipped || !strings.Contains(j.Error, "window") {
			t.Fatalf("late run: %+v", j)
		}
	}

	// run-now makes automatic backups at once, also for a disabled policy.
	call[api.PolicyView](t, c, "PATCH", "/v1/policies/daily", api.PolicyRequest{Enabled: ptr(false)})
	now := call[[]catalog.Job](t, c, "POST", "/v1/policies/daily/run-now", nil)
	if len(now) != 3 || now[0].Trigger != catalog.TriggerAuto {
		t.Fatalf("run-now: %+v", now)
	}
	jobs += 3
	settle(t, c, jobs)
	if bs := autoBackups(t, c, "web1"); len(bs) != 2 {
		t.Fatalf("retention after run-now: %d automatic backups", len(bs))
	}

	// Deleting a policy unbinds its servers.
	call[any](t, c, "DELETE", "/v1/policies/daily", nil)
	if s := call[api.ServerView](t, c, "GET", "/v1/servers/web1", nil); s.PolicyID != "" {
		t.Fatalf("server still bound after policy delete: %+v", s)
	}
}

func TestQueuedJobSkippedAfterWindow(t *testing.T) {
	// A job that cannot start within the window after its slot is skipped.
	clock := scheduler.NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	d := testdaemon.Start(t, clock, nil)
	c := d.Admin
	img := testdisk.Sparse(t, d.Dir, 1<<20, 100, 0)
	call[api.ServerView](t, c, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	// Two backup jobs of one server: the second is skipped at once, not stacked.
	j1 := call[catalog.Job](t, c, "POST", "/v1/backups", api.CreateBackupRequest{Server: "web1"})
	var second catalog.Job
	err := c.Do(context.Background(), "POST", "/v1/backups", nil, api.CreateBackupRequest{Server: "web1"}, &second)
	jobs := settle(t, c, 2)
	if err == nil {
		// The first finished before the second arrived; then both ran.
		t.Logf("first job %s ended before the second was submitted", j1.ID)
		return
	}
	if !strings.Contains(err.Error(), "already has backup job") {
		t.Fatalf("second job: %v", err)
	}
	skipped := 0
	for _, j := range jobs {
		if j.State == catalog.JobSkipped {
			skipped++
		}
	}
	if skipped != 1 {
		t.Fatalf("want one skipped job: %+v", jobs)
	}
}

func findBackup(c *api.Client, ref string) (api.BackupView, error) {
	var b api.BackupView
	err := c.Do(context.Background(), "GET", "/v1/backups/"+ref, nil, nil, &b)
	return b, err
}

func ptr[T any](v T) *T { return &v }

// TestMaintenanceOnSchedule: gc runs daily at its wall time and scrub at
// its interval, on the daemon's clock, as jobs the admin sees in job ls.
func TestMaintenanceOnSchedule(t *testing.T) {
	start := time.Date(2026, 6, 1, 1, 0, 0, 0, time.UTC)
	clock := scheduler.NewFakeClock(start)
	d := testdaemon.Start(t, clock, func(c *config.Config) {
		c.GC = config.Periodic{Schedule: "05:00", Timezone: "Asia/Shanghai"} // 21:00 UTC
		c.Scrub = config.Periodic{Every: config.Duration(6 * time.Hour)}
	})
	c := d.Admin
	// Both maintenance loops, the policy scheduler and the replication
	// scheduler sleep on the clock before time moves, so no deadline is
	// computed from a later time.
	waitWaiters(t, clock, sleepers)
	st := call[api.Status](t, c, "GET", "/v1/status", nil)
	if st.NextGC == nil || !st.NextGC.Equal(time.Date(2026, 6, 1, 21, 0, 0, 0, time.UTC)) ||
		st.NextScrub == nil || !st.NextScrub.Equal(time.Date(2026, 6, 1, 7, 0, 0, 0, time.UTC)) {
		t.Fatalf("status: next gc %v, next scrub %v; want 21:00 and 07:00 UTC", st.NextGC, st.NextScrub)
	}

	maintenance := func() (gc, scrub []catalog.Job) {
		for _, j := range call[[]catalog.Job](t, c, "GET", "/v1/jobs", nil) {
			switch j.Kind {
			case catalog.JobGC:
				gc = append(gc, j)
			case catalog.JobScrub:
				scrub = append(scrub, j)
			}
		}
		return gc, scrub
	}
	steps := []struct {
		at        time.Time
		gc, scrub int
	}{
		{time.Date(2026, 6, 1, 6, 59, 0, 0, time.UTC), 0, 0},
		{time.Date(2026, 6, 1, 7, 0, 0, 0, time.UTC), 0, 1},
		{time.Date(2026, 6, 1, 20, 59, 0, 0, time.UTC), 0, 3},
		{time.Date(2026, 6, 1, 21, 0, 0, 0, time.UTC), 1, 3},
		{time.Date(2026, 6, 2, 21, 0, 0, 0, time.UTC), 2, 7},
	}
	for _, st := range steps {
		// Move in small steps so that each loop re-arms before the next
		// deadline passes, as real time would.
		for clock.Now().Before(st.at) {
			next := clock.Now().Add(time.Hour)
			if next.After(st.at) {
				next = st.at
			}
			clock.Set(next)
			waitWaiters(t, clock, sleepers)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			gc, scrub := maintenance()
			if len(gc) == st.gc && len(scrub) == st.scrub {
				done := true
				for _, j := range append(gc, scrub...) {
					done = done && j.Finished()
					if j.Finished() && j.State != catalog.JobSucceeded {
						t.Fatalf("%s job %s: %s %s", j.Kind, j.ID, j.State, j.Error)
					}
				}
				if done {
					break
				}
			}
			if len(gc) > st.gc || len(scrub) > st.scrub || time.Now().After(deadline) {
				t.Fatalf("at %s: %d gc and %d scrub jobs, want %d and %d", st.at, len(gc), len(scrub), st.gc, st.scrub)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// sleepers is how many loops of the daemon sleep on its clock: gc,
// scrub, the policy scheduler and the replication scheduler.
const sleepers = 4

// waitWaiters waits (in real time) until at least n timers wait on clock.
func waitWaiters(t *testing.T, clock *scheduler.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for clock.Waiters() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers wait on the clock, want %d", clock.Waiters(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
