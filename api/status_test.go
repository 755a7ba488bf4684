package api_test

import (
	"context"
	"os"
	"testing"

	"csbs/api"
	"csbs/catalog"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
)

// TestStatusCountersAcrossRestart: status counts a project's backups
// from counters kept in the catalog, not from a scan; the counts agree
// with the backups listed, before and after a restart, and after a
// deletion and a failed backup.
func TestStatusCountersAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	d := testdaemon.StartIn(t, dir, nil, nil)
	c := d.Admin
	img := testdisk.Sparse(t, dir, 1<<20, 100, 0)
	gone := testdisk.Sparse(t, dir, 2<<20, 100, 0)
	do[api.ServerView](t, c, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	do[api.ServerView](t, c, "POST", "/v1/servers", api.AddServerRequest{Name: "flaky", Disks: []catalog.Disk{{Name: "vda", Source: gone}}})
	os.Remove(gone)
	backup := func(server string) catalog.Job {
		j := do[catalog.Job](t, c, "POST", "/v1/backups", api.CreateBackupRequest{Server: server})
		if err := c.Do(context.Background(), "POST", "/v1/jobs/"+j.ID+"/wait", nil, nil, &j); err != nil {
			t.Fatal(err)
		}
		return j
	}
	for range 4 {
		if j := backup("web1"); j.State != catalog.JobSucceeded {
			t.Fatalf("backup: %+v", j)
		}
	}
	if j := backup("flaky"); j.State != catalog.JobFailed {
		t.Fatalf("backup of a missing disk: %+v", j)
	}
	bs := do[[]api.BackupView](t, c, "GET", "/v1/backups", nil)
	do[any](t, c, "DELETE", "/v1/backups/"+bs[0].ID, nil)
	want := func(c *api.Client) api.Status {
		t.Helper()
		st := do[api.Status](t, c, "GET", "/v1/status", nil)
		bs := do[[]api.BackupView](t, c, "GET", "/v1/backups", nil)
		var logical, added int64
		for _, b := range bs {
			logical += b.Size
			for _, d := range b.Disks {
				added += d.NewBytes
			}
		}
		if st.Store.Backups != len(bs) || st.Store.Backups != 3 || st.Store.LogicalBytes != logical || st.Store.AddedBytes != added {
			t.Fatalf("status says %d backups, %d logical and %d added bytes; the listing %d, %d, %d", st.Store.Backups, st.Store.LogicalBytes, st.Store.AddedBytes, len(bs), logical, added)
		}
		if len(st.Warnings) != 1 || st.JobsQueued+st.JobsRunning != 0 {
			t.Fatalf("status: %+v, want one warning for the failed job", st)
		}
		return st
	}
	before := want(c)
	d.Stop(t)
	d = testdaemon.StartIn(t, dir, nil, nil)
	after := want(d.Admin)
	b, a := before.Store, after.Store
	if b.Backups != a.Backups || b.LogicalBytes != a.LogicalBytes || b.AddedBytes != a.AddedBytes || b.DamagedBackups != a.DamagedBackups {
		t.Fatalf("store status changed across a restart: %+v, %+v", before.Store, after.Store)
	}
}
