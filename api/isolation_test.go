package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"csbs/api"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
)

func do[T any](t *testing.T, c *api.Client, method, path string, in any) T {
	t.Helper()
	var out T
	if err := c.Do(context.Background(), method, path, nil, in, &out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

// p1State is everything project p1 has, as its own token sees it.
func p1State(t *testing.T, c *api.Client) string {
	t.Helper()
	var b strings.Builder
	for _, path := range []string{"/v1/servers", "/v1/policies", "/v1/backups", "/v1/restores", "/v1/tokens"} {
		var v any
		if err := c.Do(context.Background(), "GET", path, nil, nil, &v); err != nil {
			t.Fatalf("snapshot %s: %v", path, err)
		}
		j, _ := json.Marshal(v)
		b.Write(j)
	}
	var jobs []catalog.Job
	_ = c.Do(context.Background(), "GET", "/v1/jobs", nil, nil, &jobs)
	for _, j := range jobs {
		b.WriteString(j.ID + j.State)
	}
	return b.String()
}

// TestProjectIsolation walks every endpoint with no token, a revoked
// token, another project's token and the right token. Only the last may
// act on project p1's objects; the others change nothing and learn
// nothing (another project's id answers exactly like an unknown id).
func TestProjectIsolation(t *testing.T) {
	d := testdaemon.Start(t, nil, func(c *config.Config) {
		// Both projects may use the test's directory (the data dir in it
		// stays off limits).
		dir := filepath.Dir(c.DataDir)
		g := config.Grant{SourceDirs: []string{dir}, TargetDirs: []string{dir}, MountDirs: []string{dir}}
		c.Access.Projects = map[string]config.Grant{"p1": g, "p2": g}
	})
	ctx := context.Background()
	admin := d.Admin
	do[catalog.Project](t, admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "p1"})
	do[catalog.Project](t, admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "p2"})
	admin.Project = "p1"
	tok1 := do[api.TokenView](t, admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "owner"})
	spare := do[api.TokenView](t, admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "spare"})
	revoked := do[api.TokenView](t, admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "old"})
	do[api.TokenView](t, admin, "DELETE", "/v1/tokens/"+revoked.ID, nil)
	admin.Project = "p2"
	tok2 := do[api.TokenView](t, admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "other"})

	right := d.Client(tok1.Secret, "")
	other := d.Client(tok2.Secret, "")
	img := testdisk.Sparse(t, d.Dir, 2<<20, 5000, 0)
	img2 := testdisk.Sparse(t, d.Dir, 3<<20, 5000, 0)
	srv := do[api.ServerView](t, right, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	srv2 := do[api.ServerView](t, right, "POST", "/v1/servers", api.AddServerRequest{Name: "web2", Disks: []catalog.Disk{{Name: "vda", Source: img2}}})
	name := "daily"
	pol := do[api.PolicyView](t, right, "POST", "/v1/policies", api.PolicyRequest{Name: &name, Times: []string{"03:00"}, EveryDays: ptr(1)})
	pol2 := do[api.PolicyView](t, right, "POST", "/v1/policies", api.PolicyRequest{Name: ptr("weekly"), Times: []string{"04:00"}, Weekdays: []string{"sun"}})
	job := do[catalog.Job](t, right, "POST", "/v1/backups", api.CreateBackupRequest{Server: "web1", Full: true, EnableIR: true})
	job = do[catalog.Job](t, right, "POST", "/v1/jobs/"+job.ID+"/wait", nil)
	if job.State != catalog.JobSucceeded {
		t.Fatalf("setup backup: %+v", job)
	}
	target := d.Dir + "/restore-vda.img"
	rs := do[catalog.Restore](t, right, "POST", "/v1/restores", api.StartRestoreRequest{Backup: job.BackupID, Targets: []catalog.RestoreTarget{{Disk: "vda", Target: target}}})
	do[catalog.Job](t, right, "POST", "/v1/jobs/"+rs.JobID+"/wait", nil)

	type row struct {
		method, path string
		body         any
		// ownScope: the call has no reference into p1 (a list, or a create
		// in the caller's own project): another project's token may
		// succeed, but must see and change nothing of p1.
		ownScope bool
		unknown  string // the same path with an unknown id, for (c)
		// rightFails: the right token is refused for another reason (a
		// browse of a fresh test backup needs a file system on the disk).
		rightFails bool
	}
	rows := []row{
		{method: "GET", path: "/v1/status", ownScope: true},
		{method: "GET", path: "/v1/projects", ownScope: true},
		{method: "GET", path: "/v1/tokens", ownScope: true},
		{method: "GET", path: "/v1/servers", ownScope: true},
		{method: "GET", path: "/v1/servers/" + srv.ID, unknown: "/v1/servers/srv-000000000000"},
		{method: "GET", path: "/v1/servers/web1", unknown: "/v1/servers/web9"},
		{method: "GET", path: "/v1/policies", ownScope: true},
		{method: "GET", path: "/v1/policies/" + pol.ID, unknown: "/v1/policies/pol-000000000000"},
		{method: "GET", path: "/v1/backups", ownScope: true},
		{method: "GET", path: "/v1/backups/" + job.BackupID, unknown: "/v1/backups/bk-000000000000"},
		{method: "GET", path: "/v1/restores", ownScope: true},
		{method: "GET", path: "/v1/restores/" + rs.ID, unknown: "/v1/restores/rst-000000000000"},
		{method: "GET", path: "/v1/jobs", ownScope: true},
		{method: "GET", path: "/v1/jobs/" + job.ID, unknown: "/v1/jobs/job-000000000000"},
		{method: "POST", path: "/v1/jobs/" + job.ID + "/wait", unknown: "/v1/jobs/job-000000000000/wait"},
		{method: "PATCH", path: "/v1/policies/" + pol.ID, body: api.PolicyRequest{Times: []string{"05:00"}}, unknown: "/v1/policies/pol-000000000000"},
		{method: "POST", path: "/v1/policies/" + pol.ID + "/bind", body: api.BindRequest{Server: srv.ID}, unknown: "/v1/policies/pol-000000000000/bind"},
		{method: "POST", path: "/v1/policies/" + pol.ID + "/retention-preview", unknown: "/v1/policies/pol-000000000000/retention-preview"},
		{method: "POST", path: "/v1/servers/" + srv.ID + "/unbind", unknown: "/v1/servers/srv-000000000000/unbind"},
		{method: "POST", path: "/v1/policies/" + pol2.ID + "/run-now", unknown: "/v1/policies/pol-000000000000/run-now"},
		{method: "PATCH", path: "/v1/backups/" + job.BackupID, body: api.UpdateBackupRequest{Protected: ptr(true)}, unknown: "/v1/backups/bk-000000000000"},
		{method: "POST", path: "/v1/backups", body: api.CreateBackupRequest{Server: srv2.ID}, unknown: "/v1/backups"},
		{method: "POST", path: "/v1/restores", body: api.StartRestoreRequest{Backup: job.BackupID, Targets: []catalog.RestoreTarget{{Disk: "vda", Target: d.Dir + "/r2.img"}}}, unknown: "/v1/restores"},
		{method: "POST", path: "/v1/servers", body: api.AddServerRequest{Name: "web3", Disks: []catalog.Disk{{Name: "vda", Source: img}}}, ownScope: true},
		{method: "POST", path: "/v1/policies", body: api.PolicyRequest{Name: ptr("monthly"), Times: []string{"01:00"}, EveryDays: ptr(30)}, ownScope: true},
		{method: "POST", path: "/v1/tokens", body: api.CreateTokenRequest{Name: "new"}, ownScope: true},
		{method: "POST", path: "/v1/jobs/job-ffffffffffff/cancel", unknown: "/v1/jobs/job-eeeeeeeeeeee/cancel"},
		{method: "GET", path: "/v1/exports", ownScope: true},
		{method: "GET", path: "/v1/mounts", ownScope: true},
		{method: "GET", path: "/v1/store/stats", ownScope: true},
		{method: "POST", path: "/v1/backups/" + job.BackupID + "/attach", body: api.AttachRequest{Disk: "vda"}, unknown: "/v1/backups/bk-000000000000/attach"},
		{method: "POST", path: "/v1/backups/" + job.BackupID + "/detach", body: api.AttachRequest{Disk: "vda"}, unknown: "/v1/backups/bk-000000000000/detach"},
		{method: "POST", path: "/v1/restores/" + rs.ID + "/cancel", unknown: "/v1/restores/rst-000000000000/cancel", rightFails: true}, // already finished: 409
		{method: "POST", path: "/v1/backups/" + job.BackupID + "/browse", body: api.MountRequest{Path: d.Dir + "/browse-x"}, unknown: "/v1/backups/bk-000000000000/browse", rightFails: true},
		{method: "DELETE", path: "/v1/tokens/" + spare.ID, unknown: "/v1/tokens/tok-000000000000"},
		{method: "DELETE", path: "/v1/policies/" + pol2.ID, unknown: "/v1/policies/pol-000000000000"},
		{method: "DELETE", path: "/v1/backups/" + job.BackupID + "?force=true", unknown: "/v1/backups/bk-000000000000?force=true"},
		{method: "DELETE", path: "/v1/servers/" + srv2.ID, unknown: "/v1/servers/srv-000000000000"},
	}
	raw := func(c *api.Client, method, path string, body any) (int, string) {
		var q map[string][]string
		if p, query, ok := strings.Cut(path, "?"); ok {
			path = p
			q = map[string][]string{}
			for _, kv := range strings.Split(query, "&") {
				k, v, _ := strings.Cut(kv, "=")
				q[k] = []string{v}
			}
		}
		var out json.RawMessage
		err := c.Do(ctx, method, path, q, body, &out)
		var ae *api.Error
		if errors.As(err, &ae) {
			return ae.Status, ae.Code + ": " + ae.Message
		}
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return 200, string(out)
	}
	counts := map[string]int{}
	for _, r := range rows {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			before := p1State(t, right)
			for _, tc := range []struct {
				kind   string
				client *api.Client
			}{
				{"no token", d.Client("", "")},
				{"revoked token", d.Client(revoked.Secret, "")},
				{"wrong token", d.Client("csbs_0123456789", "")},
			} {
				if status, body := raw(tc.client, r.method, r.path, r.body); status != http.StatusUnauthorized {
					t.Fatalf("%s: status %d %s, want 401", tc.kind, status, body)
				}
				counts[tc.kind]++
			}
			status, body := raw(other, r.method, r.path, r.body)
			switch {
			case r.ownScope:
				if status >= 300 {
					t.Fatalf("other project on its own scope: %d %s", status, body)
				}
				for _, id := range []string{srv.ID, srv2.ID, pol.ID, pol2.ID, job.BackupID, job.ID, rs.ID, tok1.ID, spare.ID, `"web1"`, `"daily"`} {
					if strings.Contains(body, id) {
						t.Fatalf("other project sees %s: %s", id, body)
					}
				}
			default:
				if status != http.StatusNotFound {
					t.Fatalf("other project: status %d %s, want 404", status, body)
				}
				// Indistinguishable from an unknown id.
				_, unknownBody := raw(other, r.method, r.unknown, r.body)
				norm := func(s string) string {
					for _, id := range []string{srv.ID, srv2.ID, pol.ID, pol2.ID, job.BackupID, job.ID, rs.ID, spare.ID, "web1", "web9", "job-ffffffffffff", "job-eeeeeeeeeeee", "srv-000000000000", "pol-000000000000", "bk-000000000000", "job-000000000000", "rst-000000000000", "tok-000000000000"} {
						s = strings.ReplaceAll(s, id, "ID")
					}
					return s
				}
				if norm(body) != norm(unknownBody) {
					t.Fatalf("another project's object answers differently from an unknown one:\n%s\n%s", body, unknownBody)
				}
			}
			counts["other project"]++
			if after := p1State(t, right); after != before {
				t.Fatalf("a refused call changed p1:\n%s\n%s", before, after)
			}
			if strings.Contains(r.path, "job-ffffffffffff") {
				return // no such job for anyone
			}
			if status, body := raw(right, r.method, r.path, r.body); status >= 300 && !r.rightFails {
				t.Fatalf("right token: %d %s", status, body)
			} else if r.rightFails && (status == http.StatusNotFound || status == http.StatusUnauthorized) {
				t.Fatalf("right token refused as if it did not own the object: %d %s", status, body)
			}
			waitIdle(t, right)
			counts["right token"]++
		})
	}
	t.Logf("isolation matrix: %d endpoints × 5 token kinds: %v", len(rows), counts)
	// Admin-only endpoints refuse project tokens.
	for _, c := range []*api.Client{right, other} {
		if status, _ := raw(c, "POST", "/v1/projects", api.CreateProjectRequest{Name: "p3"}); status != http.StatusForbidden {
			t.Fatalf("project token created a project: %d", status)
		}
		if status, _ := raw(c, "DELETE", "/v1/projects/p2", nil); status != http.StatusForbidden {
			t.Fatalf("project token removed a project: %d", status)
		}
	}
	// Store-wide maintenance is the admin's.
	for _, path := range []string{"/v1/gc", "/v1/scrub"} {
		if status, _ := raw(right, "POST", path, nil); status != http.StatusForbidden {
			t.Fatalf("project token ran %s: %d", path, status)
		}
	}
	// A project token cannot name another project.
	other.Project = "p1"
	if status, _ := raw(other, "GET", "/v1/servers", nil); status != http.StatusNotFound {
		t.Fatalf("p2 token with X-Csbs-Project p1: %d", status)
	}
}

func ptr[T any](v T) *T { return &v }

// waitIdle waits until every job of the client's project has ended.
func waitIdle(t *testing.T, c *api.Client) {
	t.Helper()
	var jobs []catalog.Job
	if err := c.Do(context.Background(), "GET", "/v1/jobs", nil, nil, &jobs); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if !j.Finished() {
			do[catalog.Job](t, c, "POST", "/v1/jobs/"+j.ID+"/wait", nil)
		}
	}
}
