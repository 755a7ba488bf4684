package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"csbs/api"
	"csbs/catalog"
	"csbs/internal/testdisk"
)

// TestCLIProjectIsolation walks every CLI command that names project
// objects with no token, a revoked token, a wrong token, another
// project's token and the right token. Only the last may act; the others
// fail with a clear error, change nothing of project p1 and print none of
// its names.
func TestCLIProjectIsolation(t *testing.T) {
	t.Parallel()
	// Both projects may use the test's dir (the data dir in it stays off
	// limits); what they may not do is reach each other's objects.
	grant := "source_dirs = [\"{dir}\"]\ntarget_dirs = [\"{dir}\"]\nmount_dirs = [\"{dir}\"]\n"
	a := startAppliance(t, "[access.projects.p1]\n"+grant+"[access.projects.p2]\n"+grant)
	root := os.Geteuid() == 0
	sock := filepath.Join(a.dir, "data", "csbs.sock")
	secret := func(args ...string) string {
		t.Helper()
		return strings.TrimSpace(a.ok(append(args, "--quiet")...))
	}
	a.ok("project", "create", "p1")
	a.ok("project", "create", "p2")
	tok1 := secret("token", "create", "--project", "p1", "--name", "owner")
	tok2 := secret("token", "create", "--project", "p2", "--name", "other")
	var spare, old struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	a.okJSON(&spare, "token", "create", "--project", "p1", "--name", "spare")
	a.okJSON(&old, "token", "create", "--project", "p1", "--name", "old")
	a.ok("token", "revoke", "--project", "p1", old.ID)

	as := func(tok string) []string { return []string{"CSBS_TOKEN=" + tok} }
	noTokCfg := filepath.Join(a.dir, "notoken.toml")
	os.WriteFile(noTokCfg, []byte("data_dir = \""+filepath.Join(a.dir, "empty")+"\"\n[api]\nsocket = \""+sock+"\"\n"), 0o600)
	p1 := func(args ...string) string {
		t.Helper()
		out, errOut, code := a.run(as(tok1), args...)
		if code != 0 {
			t.Fatalf("setup csbs %s: %s%s", strings.Join(args, " "), out, errOut)
		}
		return out
	}
	img := testdisk.Ext4(t, a.dir, 32, 8, 5)
	img2 := testdisk.Sparse(t, a.dir, 2<<20, 5000, 0)
	p1("server", "add", "--name", "web1", "--disk", "vda="+img)
	p1("server", "add", "--name", "web2", "--disk", "vda="+img2)
	p1("policy", "create", "--name", "daily", "--time", "03:00", "--every-days", "1")
	p1("policy", "create", "--name", "weekly", "--time", "04:00", "--weekdays", "sun")
	p1("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	rid := strings.TrimSpace(p1("restore", "start", "golden", "--disk", "vda="+filepath.Join(a.dir, "r1.img"), "--quiet"))
	p1("restore", "show", rid)
	var jobs []catalog.Job
	if err := json.Unmarshal([]byte(p1("job", "ls", "--json")), &jobs); err != nil || len(jobs) == 0 {
		t.Fatalf("job ls: %v %v", err, jobs)
	}
	jid := jobs[0].ID
	if root {
		p1("mount", filepath.Join(a.dir, "mnt-p1"))
	}

	apiClient := api.NewUnixClient(sock, tok1)
	state := func() string {
		t.Helper()
		var b strings.Builder
		for _, path := range []string{"/v1/servers", "/v1/policies", "/v1/backups", "/v1/tokens", "/v1/exports", "/v1/mounts"} {
			var v any
			if err := apiClient.Do(context.Background(), "GET", path, nil, nil, &v); err != nil {
				t.Fatalf("snapshot %s: %v", path, err)
			}
			j, _ := json.Marshal(v)
			b.Write(j)
		}
		var rs []catalog.Restore
		apiClient.Do(context.Background(), "GET", "/v1/restores", nil, nil, &rs)
		for _, r := range rs {
			b.WriteString(r.ID + r.State)
		}
		var js []catalog.Job
		apiClient.Do(context.Background(), "GET", "/v1/jobs", nil, nil, &js)
		for _, j := range js {
			b.WriteString(j.ID + j.State)
		}
		return b.String()
	}
	secrets := []string{"web1", "web2", "daily", "weekly", "golden", rid, jid, spare.ID, "owner"}

	type row struct {
		args       []string
		ownScope   bool     // lists and creates in the caller's own project
		undoOther  []string // undoes what the other project's ownScope call made
		rightFails bool     // the right token is refused for another reason (state)
		adminOnly  bool     // every project token is refused
	}
	browse := filepath.Join(a.dir, "browse-p1")
	rows := []row{
		{args: []string{"status"}, ownScope: true},
		{args: []string{"server", "ls"}, ownScope: true},
		{args: []string{"server", "show", "web1"}},
		{args: []string{"policy", "ls"}, ownScope: true},
		{args: []string{"policy", "show", "daily"}},
		{args: []string{"policy", "update", "daily", "--time", "05:00"}},
		{args: []string{"policy", "disable", "daily"}},
		{args: []string{"policy", "enable", "daily"}},
		{args: []string{"policy", "bind", "daily", "web1"}},
		{args: []string{"policy", "retention", "daily"}},
		{args: []string{"policy", "unbind", "web1"}},
		{args: []string{"policy", "run-now", "weekly", "--wait"}},
		{args: []string{"backup", "ls"}, ownScope: true},
		{args: []string{"backup", "show", "golden"}},
		{args: []string{"backup", "protect", "golden"}},
		{args: []string{"backup", "protect", "golden", "--off"}},
		{args: []string{"backup", "create", "web2", "--wait"}},
		{args: []string{"backup", "attach", "golden"}},
		{args: []string{"export", "ls"}, ownScope: true},
		{args: []string{"backup", "detach", "golden"}},
		{args: []string{"backup", "browse", "golden", browse}, rightFails: !root},
		{args: []string{"backup", "unbrowse", browse}, rightFails: !root},
		{args: []string{"umount", filepath.Join(a.dir, "mnt-p1")}, rightFails: !root},
		{args: []string{"restore", "ls"}, ownScope: true},
		{args: []string{"restore", "show", rid}},
		{args: []string{"restore", "start", "golden", "--disk", "vda=" + filepath.Join(a.dir, "r2.img"), "--wait"}},
		{args: []string{"restore", "pause", rid}, rightFails: true}, // a finished normal restore: conflict
		{args: []string{"restore", "resume", rid}, rightFails: true},
		{args: []string{"restore", "finish", rid}, rightFails: true},
		{args: []string{"restore", "cancel", rid}, rightFails: true},
		{args: []string{"job", "ls"}, ownScope: true},
		{args: []string{"job", "show", jid}},
		{args: []string{"job", "wait", jid}},
		{args: []string{"job", "cancel", jid}, rightFails: true}, // finished
		{args: []string{"token", "ls"}, ownScope: true},
		{args: []string{"server", "add", "--name", "web3", "--disk", "vda=" + img2}, ownScope: true},
		{args: []string{"policy", "create", "--name", "monthly", "--time", "01:00", "--every-days", "30"}, ownScope: true},
		{args: []string{"token", "create", "--name", "new"}, ownScope: true},
		{args: []string{"store", "stats"}, ownScope: true},
		{args: []string{"gc"}, adminOnly: true},
		{args: []string{"scrub"}, adminOnly: true},
		{args: []string{"project", "create", "p3"}, adminOnly: true},
		{args: []string{"project", "rm", "p2"}, adminOnly: true},
		{args: []string{"token", "revoke", spare.ID}},
		{args: []string{"policy", "rm", "weekly"}},
		{args: []string{"backup", "rm", "golden", "--force"}},
		{args: []string{"server", "rm", "web2"}},
	}
	if root {
		rows = append(rows, row{args: []string{"mount", filepath.Join(a.dir, "mnt-x")}, ownScope: true, undoOther: []string{"umount", filepath.Join(a.dir, "mnt-x")}})
	}
	counts := map[string]int{}
	for _, r := range rows {
		name := strings.Join(r.args, " ")
		before := state()
		for _, tc := range []struct {
			kind string
			env  []string
		}{
			{"no token", []string{"CSBS_CONFIG=" + noTokCfg}},
			{"revoked token", as(old.Secret)},
			{"wrong token", as("csbs_0123456789abcdef")},
		} {
			out, errOut, code := a.run(tc.env, r.args...)
			if code == 0 || !strings.Contains(errOut, "token") {
				t.Fatalf("csbs %s with %s: exit %d, want an error about the token\n%s%s", name, tc.kind, code, out, errOut)
			}
			counts[tc.kind]++
		}
		out, errOut, code := a.run(as(tok2), r.args...)
		switch {
		case r.adminOnly:
			if code == 0 || !strings.Contains(errOut, "admin") {
				t.Fatalf("csbs %s with a project token: exit %d %s%s", name, code, out, errOut)
			}
		case r.ownScope:
			if code != 0 {
				t.Fatalf("csbs %s by another project in its own scope: %s%s", name, out, errOut)
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Fatalf("csbs %s shows another project %q:\n%s", name, s, out)
				}
			}
			if r.undoOther != nil {
				if _, e, c := a.run(as(tok2), r.undoOther...); c != 0 {
					t.Fatalf("undo %v: %s", r.undoOther, e)
				}
			}
		default:
			if code == 0 || !(strings.Contains(errOut, "not found") || strings.Contains(errOut, "not a csbs mount") || strings.Contains(errOut, "not a browse mount")) {
				t.Fatalf("csbs %s by another project: exit %d, want not found\n%s%s", name, code, out, errOut)
			}
		}
		counts["other project"]++
		if after := state(); after != before {
			t.Fatalf("csbs %s by a refused caller changed p1:\n%s\n%s", name, before, after)
		}
		out, errOut, code = a.run(as(tok1), r.args...)
		switch {
		case r.adminOnly:
			if code == 0 || !strings.Contains(errOut, "admin") {
				t.Fatalf("csbs %s with p1's token: exit %d %s%s", name, code, out, errOut)
			}
		case r.rightFails:
			if code == 0 || strings.Contains(errOut, "not found") || strings.Contains(errOut, "token") {
				t.Fatalf("csbs %s by the owner: exit %d, want a refusal for another reason\n%s%s", name, code, out, errOut)
			}
		case code != 0:
			t.Fatalf("csbs %s by the owner: %s%s", name, out, errOut)
		}
		counts["right token"]++
	}
	t.Logf("CLI isolation matrix: %d commands × 5 token kinds: %v", len(rows), counts)
}
