package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/api"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
	"csbs/nbd"
)

// call sends a request and returns the status and the error message (or
// the body), without failing the test. A call that does not answer
// within a minute fails it: nothing a caller names may hang the API.
func call(t *testing.T, c *api.Client, method, path string, in, out any) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var raw json.RawMessage
	err := c.Do(ctx, method, path, nil, in, &raw)
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status, ae.Message
	}
	if err != nil {
		t.Fatalf("%s %s: %v (hung or broke)", method, path, err)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return http.StatusOK, string(raw)
}

// memExports serves one in-memory disk over NBD, standing in for a
// qemu-nbd export a server's disk might come from.
type memExports struct{ exp *nbd.Export }

func (m memExports) Lookup(name string) (*nbd.Export, bool) { return m.exp, name == m.exp.Name }
func (m memExports) Names() []string                        { return []string{m.exp.Name} }

func serveNBD(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("nbd disk "), 1<<17)
	srv := &nbd.ExportServer{Exports: memExports{&nbd.Export{Name: "disk", Device: bytes.NewReader(data), ReadOnly: true}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); l.Close(); <-done })
	return l
}

// TestHostAccessMatrix runs every kind of host path through a real
// daemon as the admin token, a project token with a grant and a project
// token without one: disk sources (files and NBD URIs), normal and
// instant restore targets, mount and browse paths, each inside the
// grant, outside it, through a symlink out of the grant, through a
// symlink into it, in the data dir and through a symlink into the data
// dir. The data dir is refused to everyone, a project token may use only
// what it was granted (symlinks resolved), the admin anything else; a
// refused call changes nothing, and the store still restores exactly.
func TestHostAccessMatrix(t *testing.T) {
	var root, granted string
	d := testdaemon.Start(t, nil, func(c *config.Config) {
		root = filepath.Dir(c.DataDir)
		granted = filepath.Join(root, "granted")
		c.Access.Projects = map[string]config.Grant{
			"p1": {SourceDirs: []string{granted}, TargetDirs: []string{granted}, MountDirs: []string{granted}},
			"p3": {NBDHosts: []string{"127.0.0.1"}},
		}
	})
	data := d.Config.DataDir
	outside := filepath.Join(root, "outside")
	for _, dir := range []string{granted, outside} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := testdisk.Ext4(t, granted, 16, 2, 7)
	secret := filepath.Join(outside, "secret.img") // a host file no project was given
	if err := os.WriteFile(secret, bytes.Repeat([]byte("root only "), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	for link, to := range map[string]string{
		filepath.Join(granted, "link-out"): secret,
		filepath.Join(granted, "outdir"):   outside,
		filepath.Join(granted, "datalink"): data,
		filepath.Join(granted, "ownnbd"):   d.Config.NBD.Socket,
		filepath.Join(outside, "link-in"):  img,
		filepath.Join(outside, "indir"):    granted,
	} {
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
	}
	unixNBD := serveNBD(t, "unix", filepath.Join(granted, "qemu-nbd.sock"))
	tcpNBD := serveNBD(t, "tcp", "127.0.0.1:0")
	adminToken, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"p1", "p2", "p3"} {
		do[catalog.Project](t, d.Admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: p})
	}
	clients := map[string]*api.Client{"admin": d.Client(strings.TrimSpace(string(adminToken)), "p1")}
	for _, p := range []string{"p1", "p2", "p3"} {
		tok := do[api.TokenView](t, d.Client(strings.TrimSpace(string(adminToken)), p), "POST", "/v1/tokens", api.CreateTokenRequest{Name: "t"})
		clients[p] = d.Client(tok.Secret, "")
	}
	backupOf := func(c *api.Client, server string) string {
		t.Helper()
		j := do[catalog.Job](t, c, "POST", "/v1/backups", api.CreateBackupRequest{Server: server, Full: true, EnableIR: true})
		j = do[catalog.Job](t, c, "POST", "/v1/jobs/"+j.ID+"/wait", nil)
		if j.State != catalog.JobSucceeded {
			t.Fatalf("backup of %s: %s %s", server, j.State, j.Error)
		}
		return j.BackupID
	}
	// p1 backs up its own granted disk; p2 has no grant, so the admin
	// adds a disk to p2, which p2's token may then back up: the admin's
	// grant.
	do[api.ServerView](t, clients["p1"], "POST", "/v1/servers", api.AddServerRequest{Name: "base", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	adminP2 := d.Client(strings.TrimSpace(string(adminToken)), "p2")
	sv := do[api.ServerView](t, adminP2, "POST", "/v1/servers", api.AddServerRequest{Name: "base", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	if !sv.Disks[0].ByAdmin {
		t.Fatal("a disk the admin added is not marked as the admin's grant")
	}
	backups := map[string]string{"p1": backupOf(clients["p1"], "base"), "p2": backupOf(clients["p2"], "base")}
	backups["admin"] = backups["p1"]

	type location struct {
		name string
		path func(use string, n int) string
		// allowed for the callers listed; "data" = nobody.
		allowed []string
	}
	pick := func(source, target, mount string) func(string, int) string {
		return func(use string, n int) string {
			switch use {
			case "source":
				return source
			case "target", "instant":
				return fmt.Sprintf(target, n)
			}
			return fmt.Sprintf(mount, n)
		}
	}
	storeFile := ""
	if es, err := os.ReadDir(filepath.Join(data, "store")); err == nil && len(es) > 0 {
		storeFile = filepath.Join(data, "store", es[0].Name())
	} else {
		t.Fatalf("no store file: %v", err)
	}
	locations := []location{
		{"inside the grant", pick(img, granted+"/t%d.img", granted+"/m%d"), []string{"admin", "p1"}},
		{"outside the grant", pick(secret, outside+"/t%d.img", outside+"/m%d"), []string{"admin"}},
		{"symlink in the grant to outside", pick(granted+"/link-out", granted+"/outdir/t%d.img", granted+"/outdir/m%d"), []string{"admin"}},
		{"symlink outside to the grant", pick(outside+"/link-in", outside+"/indir/t%d.img", outside+"/indir/m%d"), []string{"admin", "p1"}},
		{"data dir", pick(data+"/admin.token", storeFile, data+"/m%d"), nil},
		{"symlink into the data dir", pick(granted+"/datalink/admin.token", granted+"/datalink/store/t%d", granted+"/datalink/m%d"), nil},
	}
	root0 := os.Geteuid() == 0
	_, fuseErr := os.Stat("/dev/fuse")
	canMount := root0 && fuseErr == nil
	if !canMount {
		t.Log("not root or no /dev/fuse: allowed mounts and browses are checked only for not being refused by host access")
	}
	tokenBefore := string(adminToken)
	n := 0
	counts := map[string]int{}
	for _, use := range []string{"source", "target", "instant", "mount", "browse"} {
		for _, loc := range locations {
			for _, who := range []string{"admin", "p1", "p2"} {
				n++
				path := loc.path(use, n)
				name := fmt.Sprintf("%s/%s/%s", use, loc.name, who)
				t.Run(name, func(t *testing.T) {
					c := clients[who]
					_, existedErr := os.Lstat(path)
					var status int
					var msg string
					switch use {
					case "source":
						// A request cannot claim the admin's grant.
						status, msg = call(t, c, "POST", "/v1/servers", api.AddServerRequest{Name: fmt.Sprintf("s%d", n), Disks: []catalog.Disk{{Name: "vda", Source: path, ByAdmin: true}}}, nil)
					case "target", "instant":
						var rs catalog.Restore
						status, msg = call(t, c, "POST", "/v1/restores", api.StartRestoreRequest{Backup: backups[who], Targets: []catalog.RestoreTarget{{Disk: "vda", Target: path}}, Force: true, Instant: use == "instant"}, &rs)
						if status == http.StatusOK && use == "target" {
							if j := do[catalog.Job](t, c, "POST", "/v1/jobs/"+rs.JobID+"/wait", nil); j.State != catalog.JobSucceeded {
								t.Fatalf("allowed restore failed: %s", j.Error)
							}
							if testdisk.SHA256(t, path) != testdisk.SHA256(t, img) {
								t.Fatal("restored target differs")
							}
						}
						if status == http.StatusOK && use == "instant" {
							do[catalog.Restore](t, c, "POST", "/v1/restores/"+rs.ID+"/cancel", nil)
						}
					case "mount":
						status, msg = call(t, c, "POST", "/v1/mounts", api.MountRequest{Path: path}, nil)
						if status == http.StatusOK {
							do[json.RawMessage](t, c, "POST", "/v1/mounts/unmount", api.MountRequest{Path: path})
						}
					case "browse":
						status, msg = call(t, c, "POST", "/v1/backups/"+backups[who]+"/browse", api.MountRequest{Path: path}, nil)
						if status == http.StatusOK {
							do[json.RawMessage](t, c, "POST", "/v1/browse/unmount", api.MountRequest{Path: path})
						}
					}
					allowed := false
					for _, a := range loc.allowed {
						allowed = allowed || a == who
					}
					switch {
					case allowed && status == http.StatusForbidden:
						t.Fatalf("refused: %s", msg)
					case allowed && status != http.StatusOK && (canMount || (use != "mount" && use != "browse")):
						t.Fatalf("allowed path failed: %d %s", status, msg)
					case allowed:
						counts["allowed"]++
					case status != http.StatusForbidden:
						t.Fatalf("status %d %s, want 403", status, msg)
					case loc.allowed == nil && !strings.Contains(msg, "inside the appliance's own data"):
						t.Fatalf("refusal does not say it is the appliance's data: %s", msg)
					case loc.allowed != nil && who == "p2" && !strings.Contains(msg, "access.projects.p2.") && !strings.Contains(msg, "none is granted"):
						t.Fatalf("refusal does not name the setting: %s", msg)
					default:
						counts["refused"]++
						// Nothing was created or changed.
						if _, err := os.Lstat(path); errors.Is(existedErr, os.ErrNotExist) && err == nil {
							t.Fatalf("a refused %s created %s", use, path)
						}
						if use == "source" {
							if st, _ := call(t, c, "GET", fmt.Sprintf("/v1/servers/s%d", n), nil, nil); st != http.StatusNotFound {
								t.Fatalf("refused server exists: %d", st)
							}
						}
					}
				})
			}
		}
	}
	t.Logf("host access matrix: %v", counts)

	t.Run("nbd URIs", func(t *testing.T) {
		unixURI := "nbd+unix:///disk?socket=" + unixNBD.Addr().String()
		tcpURI := "nbd://" + tcpNBD.Addr().String() + "/disk"
		cases := []struct {
			who, uri, want string // want "" = allowed
		}{
			{"admin", unixURI, ""},
			{"p1", unixURI, ""}, // the socket lies in p1's source grant
			{"p2", unixURI, "access.projects.p2.source_dirs"},
			{"admin", tcpURI, ""},
			{"p1", tcpURI, "access.nbd_hosts or access.projects.p1.nbd_hosts"},
			{"p3", tcpURI, ""}, // p3 may read NBD from 127.0.0.1
			// The daemon's own NBD socket would hand out every project's
			// attached backups: nobody may name it, directly or not.
			{"admin", "nbd+unix:///x?socket=" + d.Config.NBD.Socket, "inside the appliance's own data"},
			{"p1", "nbd+unix:///x?socket=" + granted + "/ownnbd", "inside the appliance's own data"},
			{"admin", "nbd+unix:///x?socket=" + img, "not a socket"},
		}
		for i, tc := range cases {
			status, msg := call(t, clients[tc.who], "POST", "/v1/servers", api.AddServerRequest{Name: fmt.Sprintf("nbd%d", i), Disks: []catalog.Disk{{Name: "vda", Source: tc.uri}}}, nil)
			if tc.want == "" && status != http.StatusOK || tc.want != "" && !strings.Contains(msg, tc.want) {
				t.Errorf("%s %s: %d %s, want %q", tc.who, tc.uri, status, msg, tc.want)
			}
		}
	})

	// A path swapped for a symlink after the server was added is
	// refused when the backup opens it, and nothing is read.
	t.Run("swapped after add", func(t *testing.T) {
		swap := filepath.Join(granted, "swap.img")
		if err := os.WriteFile(swap, bytes.Repeat([]byte{7}, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		do[api.ServerView](t, clients["p1"], "POST", "/v1/servers", api.AddServerRequest{Name: "swap", Disks: []catalog.Disk{{Name: "vda", Source: swap}}})
		os.Remove(swap)
		if err := os.Symlink(secret, swap); err != nil {
			t.Fatal(err)
		}
		j := do[catalog.Job](t, clients["p1"], "POST", "/v1/backups", api.CreateBackupRequest{Server: "swap"})
		j = do[catalog.Job](t, clients["p1"], "POST", "/v1/jobs/"+j.ID+"/wait", nil)
		if j.State != catalog.JobFailed || !strings.Contains(j.Error, "resolves to "+secret) || !strings.Contains(j.Error, "access.projects.p1.source_dirs") {
			t.Fatalf("backup of a swapped source: %s %q", j.State, j.Error)
		}
		bs := do[[]api.BackupView](t, clients["p1"], "GET", "/v1/backups?server=swap", nil)
		if len(bs) != 0 {
			t.Fatalf("a refused backup exists: %+v", bs)
		}
	})

	// The appliance is intact: the admin token still works, and the
	// store restores the first backup byte for byte.
	if got, _ := os.ReadFile(filepath.Join(data, "admin.token")); string(got) != tokenBefore {
		t.Fatal("admin token changed")
	}
	final := filepath.Join(granted, "final.img")
	rs := do[catalog.Restore](t, clients["p1"], "POST", "/v1/restores", api.StartRestoreRequest{Backup: backups["p1"], Targets: []catalog.RestoreTarget{{Disk: "vda", Target: final}}})
	if j := do[catalog.Job](t, clients["p1"], "POST", "/v1/jobs/"+rs.JobID+"/wait", nil); j.State != catalog.JobSucceeded {
		t.Fatalf("final restore: %s", j.Error)
	}
	if testdisk.SHA256(t, final) != testdisk.SHA256(t, img) {
		t.Fatal("final restore differs")
	}
}

// TestProjectShowsHostAccess: the admin sees each project's grants, a
// project token its own (and no other project).
func TestProjectShowsHostAccess(t *testing.T) {
	d := testdaemon.Start(t, nil, func(c *config.Config) {
		c.Access.SourceDirs = []string{"/srv/shared"}
		c.Access.Projects = map[string]config.Grant{"team-a": {SourceDirs: []string{"/srv/team-a"}, MountDirs: []string{"/mnt/team-a"}, NBDHosts: []string{"10.0.0.5"}}}
	})
	do[catalog.Project](t, d.Admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "team-a"})
	do[catalog.Project](t, d.Admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "team-b"})
	pa := do[api.ProjectView](t, d.Admin, "GET", "/v1/projects/team-a", nil)
	want := `{"source_dirs":["/srv/shared","/srv/team-a"],"target_dirs":[],"mount_dirs":["/mnt/team-a"],"nbd_hosts":["10.0.0.5"]}`
	if got, _ := json.Marshal(pa.HostAccess); string(got) != want {
		t.Fatalf("team-a host access %s, want %s", got, want)
	}
	d.Admin.Project = "team-b"
	tok := do[api.TokenView](t, d.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "t"})
	b := d.Client(tok.Secret, "")
	pb := do[api.ProjectView](t, b, "GET", "/v1/projects/team-b", nil)
	if got, _ := json.Marshal(pb.HostAccess); string(got) != `{"source_dirs":["/srv/shared"],"target_dirs":[],"mount_dirs":[],"nbd_hosts":[]}` {
		t.Fatalf("team-b host access %s", got)
	}
	if status, _ := call(t, b, "GET", "/v1/projects/team-a", nil, nil); status != http.StatusNotFound {
		t.Fatalf("team-b's token read team-a: %d", status)
	}
}

// TestDiskAndTargetTypes: a disk source must be a regular file or a block
// device, a restore target a new file, a regular file or a block device.
// FIFOs, character devices, sockets and directories are refused when the
// server is added or the restore started (the CLI hears at once), and
// again when a job opens a path that was swapped meanwhile; nothing
// blocks on a FIFO, and the daemon still stops.
func TestDiskAndTargetTypes(t *testing.T) {
	d := testdaemon.Start(t, nil, nil)
	dir := d.Dir
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := serveNBD(t, "unix", filepath.Join(dir, "some.sock")).Addr().String()
	img := testdisk.Sparse(t, dir, 2<<20, 5000, 0)
	for _, tc := range []struct{ path, want string }{
		{fifo, "FIFO"},
		{"/dev/zero", "character device"},
		{"/dev/null", "character device"},
		{sock, "socket"},
		{dir, "directory"},
	} {
		status, msg := call(t, d.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "bad", Disks: []catalog.Disk{{Name: "vda", Source: tc.path}}}, nil)
		if status != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("server add --disk vda=%s: %d %s, want 400 naming %q", tc.path, status, msg, tc.want)
		}
	}
	do[api.ServerView](t, d.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	j := do[catalog.Job](t, d.Admin, "POST", "/v1/backups", api.CreateBackupRequest{Server: "web1", Full: true, EnableIR: true})
	j = do[catalog.Job](t, d.Admin, "POST", "/v1/jobs/"+j.ID+"/wait", nil)
	if j.State != catalog.JobSucceeded {
		t.Fatalf("backup: %s", j.Error)
	}
	bid := j.BackupID
	for _, instant := range []bool{false, true} {
		for _, tc := range []struct{ path, want string }{
			{fifo, "FIFO"},
			{"/dev/null", "character device"},
			{sock, "socket"},
			{dir, "directory"},
			{filepath.Join(dir, "no-such-dir", "r.img"), "no such file or directory"},
		} {
			status, msg := call(t, d.Admin, "POST", "/v1/restores", api.StartRestoreRequest{Backup: bid, Instant: instant, Force: true, Targets: []catalog.RestoreTarget{{Disk: "vda", Target: tc.path}}}, nil)
			if status != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
				t.Errorf("restore start (instant %v) --disk vda=%s: %d %s, want 400 naming %q", instant, tc.path, status, msg, tc.want)
			}
		}
	}
	if rs := do[[]catalog.Restore](t, d.Admin, "GET", "/v1/restores", nil); len(rs) != 0 {
		t.Fatalf("refused restores were recorded: %+v", rs)
	}

	// The source is swapped for a FIFO, then a character device, after
	// the server was added: the backup job fails at once, naming it.
	for _, swap := range []struct {
		name string
		make func(string) error
		want string
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "FIFO"},
		{"char device", func(p string) error { return os.Symlink("/dev/zero", p) }, "character device"},
	} {
		os.Remove(img)
		if err := swap.make(img); err != nil {
			t.Fatal(err)
		}
		j := do[catalog.Job](t, d.Admin, "POST", "/v1/backups", api.CreateBackupRequest{Server: "web1"})
		j = do[catalog.Job](t, d.Admin, "POST", "/v1/jobs/"+j.ID+"/wait", nil)
		if j.State != catalog.JobFailed || !strings.Contains(j.Error, swap.want) {
			t.Fatalf("backup of a source swapped for a %s: %s %q", swap.name, j.State, j.Error)
		}
	}
	if bs := do[[]api.BackupView](t, d.Admin, "GET", "/v1/backups", nil); len(bs) != 1 {
		t.Fatalf("backups of refused sources exist: %d", len(bs))
	}
}
