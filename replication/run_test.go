package replication_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"csbs/api"
	"csbs/catalog"
	"csbs/internal/testdisk"
	"csbs/replication"
	"csbs/scheduler"
)

// A replica is marked as one on its appliance and is never replicated
// again from there.
func TestReplicaIsNotReplicatedAgain(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Sparse(t, p.dir, 4<<20, 100000, 0, 2<<20)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	b := p.backup(t, "web1", false)
	p.addRemote(t, "src")
	j := p.replicate(t, b.Name)
	if j.State != catalog.JobSucceeded {
		t.Fatalf("replication: %+v", j)
	}
	// The source pulls from the destination.
	tok := call[api.TokenView](t, p.dst.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "back", Replication: true})
	call[api.RemoteView](t, p.src.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "dst", URL: p.dstURL, Fingerprint: p.dstCert.Fingerprint, Token: tok.Secret})
	rb := call[replication.RemoteBackup](t, p.src.Admin, "GET", "/v1/remotes/dst/backups/"+j.BackupID, nil)
	if !rb.Replica || rb.Replication.Qualifies || !strings.Contains(rb.Replication.Why, "itself a replica") {
		t.Fatalf("the replica as its appliance shows it: %+v", rb)
	}
	e := callErr(p.src.Admin, "POST", "/v1/remotes/dst/backups/"+j.BackupID+"/replicate", nil)
	if e == nil || e.Status != 409 || !strings.Contains(e.Message, "replicas are not replicated again") {
		t.Fatalf("replicating a replica: %+v", e)
	}
}

// A canceled replication goes on where it stopped: the rerun fetches
// exactly the blocks the first run did not store.
func TestCanceledReplicationResumes(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Ext4(t, p.dir, 48, 24, 21)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	b := p.backup(t, "web1", false)
	p.addRemote(t, "src")
	j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/remotes/src/backups/"+b.Name+"/replicate", api.ReplicateRequest{Rate: 4 << 20})
	for {
		cur := call[catalog.Job](t, p.dst.Admin, "GET", "/v1/jobs/"+j.ID, nil)
		if cur.Finished() {
			t.Fatalf("the job ended before it was canceled: %+v", cur)
		}
		if cur.Replicate.BlocksFetched >= 64 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	first := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/jobs/"+j.ID+"/cancel", nil)
	if first.State != catalog.JobCanceled {
		t.Fatalf("canceled job: %+v", first)
	}
	rb := call[replication.RemoteBackup](t, p.dst.Admin, "GET", "/v1/remotes/src/backups/"+b.ID, nil)
	if rb.Replication.State != catalog.ReplicaFailed || !strings.Contains(rb.Replication.Error, "canceled") {
		t.Fatalf("state after cancel: %+v", rb.Replication)
	}
	if bs := call[[]api.BackupView](t, p.dst.Admin, "GET", "/v1/backups", nil); len(bs) != 0 {
		t.Fatalf("a canceled replication is visible: %+v", bs)
	}
	second := p.replicate(t, b.Name)
	if second.State != catalog.JobSucceeded {
		t.Fatalf("rerun: %+v", second)
	}
	t.Logf("first run stored %d blocks, the rerun %d of %d", first.Replicate.BlocksFetched, second.Replicate.BlocksFetched, second.Replicate.DataBlocks)
	if first.Replicate.BlocksFetched == 0 || first.Replicate.BlocksFetched+second.Replicate.BlocksFetched != second.Replicate.DataBlocks {
		t.Fatalf("first run %d + rerun %d blocks != %d blocks of the backup", first.Replicate.BlocksFetched, second.Replicate.BlocksFetched, second.Replicate.DataBlocks)
	}
	if got := restore(t, p.dst, second.BackupID, "vda"); testdisk.SHA256(t, got) != testdisk.SHA256(t, img) {
		t.Fatal("resumed replica restores different bytes")
	}
}

// The rate limit holds on the wire once the transfer runs: the bytes
// the destination accepted over a span never exceed the rate (a speed
// measured against the rate is a benchmark figure).
func TestRateLimitHolds(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Ext4(t, p.dir, 48, 24, 31)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	b := p.backup(t, "web1", false)
	p.addRemote(t, "src")
	const rate = 2 << 20
	j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/remotes/src/backups/"+b.Name+"/replicate", api.ReplicateRequest{Rate: rate})
	for p.proxy.Down() < 1<<20 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second) // past the receive buffers' first fill
	t0, d0 := time.Now(), p.proxy.Down()
	time.Sleep(3 * time.Second)
	got := float64(p.proxy.Down()-d0) / time.Since(t0).Seconds()
	t.Logf("%.0f bytes/s on the wire at a limit of %d (%.3f)", got, rate, got/rate)
	if cur := call[catalog.Job](t, p.dst.Admin, "GET", "/v1/jobs/"+j.ID, nil); cur.Finished() {
		t.Fatalf("the transfer ended within the span measured: too little data to check the rate (%+v)", cur)
	}
	if got > 1.1*rate {
		t.Fatalf("received %.0f bytes/s, the limit is %d", got, rate)
	}
	if j = waitJob(t, p.dst.Admin, j.ID); j.State != catalog.JobSucceeded {
		t.Fatalf("replication: %+v", j)
	}
}

// A replication policy copies, at its time, the newest --last qualifying
// backups of each server; later runs copy only new ones, and a replica
// deleted here is not brought back.
func TestReplicationPolicy(t *testing.T) {
	clock := scheduler.NewFakeClock(time.Date(2030, 1, 7, 2, 0, 0, 0, time.UTC))
	p := newPairClock(t, nil, clock)
	img := testdisk.Sparse(t, p.dir, 4<<20, 100000, 0, 2<<20)
	img2 := testdisk.Sparse(t, p.dir, 3<<20, 100000, 1<<20)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web2", Disks: []catalog.Disk{{Name: "vda", Source: img2}}})
	var web1 []api.BackupView
	for i := range 3 {
		testdisk.Modify(t, img, 0.05, uint64(i))
		web1 = append(web1, p.backup(t, "web1", false))
	}
	web2 := p.backup(t, "web2", false)
	p.addRemote(t, "src")
	rep := call[api.ReplicationView](t, p.dst.Admin, "POST", "/v1/replications", api.ReplicationRequest{Name: "dr", Remote: "src", Last: 2, Times: []string{"03:00"}})
	if len(rep.NextRuns) == 0 || !rep.NextRuns[0].Equal(time.Date(2030, 1, 7, 3, 0, 0, 0, time.UTC)) {
		t.Fatalf("next runs: %v", rep.NextRuns)
	}
	clock.Advance(61 * time.Minute)
	run := waitPolicyRun(t, p, "dr", "")
	if run.State != catalog.JobSucceeded || !strings.Contains(run.Note, "3 replicated") {
		t.Fatalf("scheduled run: %+v", run)
	}
	names := func() map[string]string {
		out := map[string]string{}
		for _, b := range call[[]api.BackupView](t, p.dst.Admin, "GET", "/v1/backups", nil) {
			out[b.Name] = b.ID
		}
		return out
	}
	got := names()
	if len(got) != 3 || got[web1[1].Name] == "" || got[web1[2].Name] == "" || got[web2.Name] == "" {
		t.Fatalf("replicas after the first run: %v", got)
	}
	// A replica deleted here stays deleted; a new backup is copied.
	call[map[string]any](t, p.dst.Admin, "DELETE", "/v1/backups/"+got[web1[2].Name], nil)
	testdisk.Modify(t, img, 0.05, 9)
	newest := p.backup(t, "web1", false)
	j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/replications/dr/run-now", nil)
	if j = waitJob(t, p.dst.Admin, j.ID); j.State != catalog.JobSucceeded || !strings.Contains(j.Note, "1 replicated ("+newest.Name+")") {
		t.Fatalf("second run: %+v", j)
	}
	got = names()
	if len(got) != 3 || got[newest.Name] == "" || got[web1[2].Name] != "" {
		t.Fatalf("replicas after the second run: %v", got)
	}
	// The remote's listing says what is where.
	for _, rb := range call[[]replication.RemoteBackup](t, p.dst.Admin, "GET", "/v1/remotes/src/backups", nil) {
		want := catalog.ReplicaOK
		if rb.ID == web1[0].ID {
			want = catalog.ReplicaNone
		}
		if rb.Replication.State != want || (rb.ID == web1[2].ID) != (rb.Replication.ReplicaName == "" && want == catalog.ReplicaOK) {
			t.Errorf("%s: %+v", rb.Name, rb.Replication)
		}
	}
}

// waitPolicyRun waits for a finished run of replication name other than
// the job skip.
func waitPolicyRun(t *testing.T, p *pair, name, skip string) catalog.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		v := call[api.ReplicationView](t, p.dst.Admin, "GET", "/v1/replications/"+name, nil)
		if v.LastJob != nil && v.LastJob.ID != skip {
			return waitJob(t, p.dst.Admin, v.LastJob.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("replication %s did not run", name)
	return catalog.Job{}
}

// Connections that break in the middle of a transfer are retried: the
// job completes, what arrived before the break is stored and not asked
// for again.
func TestBrokenConnectionsAreRetried(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Ext4(t, p.dir, 48, 24, 41)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	b := p.backup(t, "web1", false)
	p.addRemote(t, "src")
	j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/remotes/src/backups/"+b.Name+"/replicate", api.ReplicateRequest{Rate: 6 << 20})
	// Cut twice, each time once more blocks arrived, in the middle of a
	// response (the proxy stops forwarding at that byte).
	last := int64(0)
	for cuts := 0; cuts < 2; {
		cur := call[catalog.Job](t, p.dst.Admin, "GET", "/v1/jobs/"+j.ID, nil)
		if cur.Finished() {
			t.Fatalf("the job ended before the connections were cut: %+v", cur)
		}
		if cur.Replicate.BlocksFetched > last {
			last = cur.Replicate.BlocksFetched
			p.proxy.CutAfter(256 << 10)
			cuts++
		}
		time.Sleep(20 * time.Millisecond)
	}
	j = waitJob(t, p.dst.Admin, j.ID)
	if j.State != catalog.JobSucceeded {
		t.Fatalf("replication over broken connections: %+v", j)
	}
	if j.Replicate.BlocksFetched != j.Replicate.DataBlocks {
		t.Fatalf("fetched %d blocks for %d data blocks", j.Replicate.BlocksFetched, j.Replicate.DataBlocks)
	}
	if got := restore(t, p.dst, j.BackupID, "vda"); testdisk.SHA256(t, got) != testdisk.SHA256(t, img) {
		t.Fatal("replica restores different bytes")
	}
}

// TestReplicationKeep: a replication policy with --keep N keeps the
// newest N replicas of each of the remote's servers; each run deletes
// older ones, except a protected one; a keep below --last is refused.
func TestReplicationKeep(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Sparse(t, p.dir, 4<<20, 100000, 0, 2<<20)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	var src []api.BackupView
	newBackup := func() {
		testdisk.Modify(t, img, 0.05, uint64(len(src)))
		src = append(src, p.backup(t, "web1", false))
	}
	for range 3 {
		newBackup()
	}
	p.addRemote(t, "src")
	if e := callErr(p.dst.Admin, "POST", "/v1/replications", api.ReplicationRequest{Name: "bad", Remote: "src", Last: 2, Keep: 1, Times: []string{"03:00"}}); e == nil || !strings.Contains(e.Message, "--keep 1: want 0 (keep every replica) or 2..") {
		t.Fatalf("keep below last: %v", e)
	}
	call[api.ReplicationView](t, p.dst.Admin, "POST", "/v1/replications", api.ReplicationRequest{Name: "dr", Remote: "src", Last: 2, Keep: 2, Times: []string{"03:00"}})
	runNow := func() catalog.Job {
		t.Helper()
		j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/replications/dr/run-now", nil)
		if j = waitJob(t, p.dst.Admin, j.ID); j.State != catalog.JobSucceeded {
			t.Fatalf("run: %+v", j)
		}
		return j
	}
	here := func() []string {
		var out []string
		for _, b := range call[[]api.BackupView](t, p.dst.Admin, "GET", "/v1/backups", nil) {
			out = append(out, b.Name)
		}
		slices.Sort(out)
		return out
	}
	want := func(bs ...api.BackupView) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Name)
		}
		slices.Sort(out)
		return out
	}
	runNow()
	if got := here(); !slices.Equal(got, want(src[1], src[2])) {
		t.Fatalf("after the first run: %v", got)
	}
	// A replica copied by hand counts too: the oldest goes at the next run.
	if j := p.replicate(t, src[0].Name); j.State != catalog.JobSucceeded {
		t.Fatalf("replicate by hand: %+v", j)
	}
	newBackup()
	j := runNow()
	if got := here(); !slices.Equal(got, want(src[2], src[3])) || !strings.Contains(j.Note, "2 older replicas deleted (--keep 2: ") {
		t.Fatalf("after the second run: %v; note %q", got, j.Note)
	}
	// A protected replica stays beyond the count.
	call[api.BackupView](t, p.dst.Admin, "PATCH", "/v1/backups/"+src[2].Name, api.UpdateBackupRequest{Protected: ptr(true)})
	newBackup()
	j = runNow()
	if got := here(); !slices.Equal(got, want(src[2], src[3], src[4])) || !strings.Contains(j.Note, src[2].Name+": protected") {
		t.Fatalf("after the third run: %v; note %q", got, j.Note)
	}
}

func ptr[T any](v T) *T { return &v }
