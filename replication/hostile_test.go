package replication_test

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testcert"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
	"csbs/remote"
	"csbs/replication"
	"csbs/scheduler"
)

// hostileSource is a fake source appliance (after pinning: it holds the
// pinned key) that answers the replication API with what the test says.
type hostileSource struct {
	info    remote.BackupInfo
	mapBody func(w http.ResponseWriter) // nil: 404
}

func startHostile(t *testing.T, dir string, h *hostileSource) (url, fp string) {
	t.Helper()
	cert := testcert.New(t, dir, "evil")
	kp, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == "/v1/replication/identity":
			json.NewEncoder(w).Encode(remote.Identity{Region: "evil", Project: "default", BlockSize: 64 << 10, Hash: remote.HashAlgorithm, MaxBatch: remote.MaxBatch})
		case strings.HasSuffix(p, "/map"):
			if h.mapBody == nil {
				w.WriteHeader(404)
				w.Write([]byte(`{"error":{"code":"not_found","message":"gone"}}`))
				return
			}
			h.mapBody(w)
		case p == "/v1/replication/backups":
			json.NewEncoder(w).Encode([]remote.BackupInfo{h.info})
		case strings.HasPrefix(p, "/v1/replication/backups/"):
			json.NewEncoder(w).Encode(h.info)
		default:
			w.WriteHeader(404)
		}
	})}
	go srv.Serve(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{kp}}))
	t.Cleanup(func() { srv.Close() })
	return "https://" + l.Addr().String(), cert.Fingerprint
}

func hostileInfo(id, disk string) remote.BackupInfo {
	return remote.BackupInfo{ID: id, Name: "evil", ServerID: "srv-0123456789ab", ServerName: "evil", Type: catalog.TypeCommon,
		Trigger: catalog.TriggerManual, Created: time.Now().Add(-time.Hour), Region: "evil", Status: "available",
		Disks: []remote.DiskInfo{{Name: disk, Size: 64 << 10, Blocks: 1}}}
}

func replicateFromHostile(t *testing.T, dst *testdaemon.Daemon, url, fp string) catalog.Job {
	t.Helper()
	call[api.RemoteView](t, dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "evil", URL: url, Fingerprint: fp, Token: "csbs_whatever"})
	j := call[catalog.Job](t, dst.Admin, "POST", "/v1/remotes/evil/backups/x/replicate", nil)
	return waitJob(t, dst.Admin, j.ID)
}

// refusedFromHostile asks for a replication that must be refused at once
// because the backup the remote describes is invalid.
func refusedFromHostile(t *testing.T, dst *testdaemon.Daemon, url, fp, want string) {
	t.Helper()
	call[api.RemoteView](t, dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "evil", URL: url, Fingerprint: fp, Token: "csbs_whatever"})
	e := callErr(dst.Admin, "POST", "/v1/remotes/evil/backups/x/replicate", nil)
	if e == nil || !strings.Contains(e.Message, "remote sent an invalid backup") || !strings.Contains(e.Message, want) {
		t.Fatalf("replication of a hostile backup: %v, want a refusal with %q", e, want)
	}
}

// The source's backup id becomes part of the scratch directory's path: a
// hostile source's id naming a directory outside the data dir (which the
// destination created and then removed as root) is refused on receipt.
func TestHostileBackupIDRemovesDirOutsideDataDir(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "precious"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hostileSource{info: hostileInfo("x"+strings.Repeat("/..", 40)+victim, "vda")}
	url, fp := startHostile(t, dir, h)
	dst := testdaemon.Start(t, nil, nil)
	refusedFromHostile(t, dst, url, fp, "id is not a backup id")
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Fatalf("a hostile source's backup id made the destination delete %s: %v", victim, err)
	}
}

// The source's disk name becomes part of the scratch file's path: a
// hostile source's disk name that would make the destination write a
// file of its choosing outside the data dir is refused on receipt.
func TestHostileDiskNameWritesOutsideDataDir(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "owned") // the destination writes target+".hashes"
	if err := os.WriteFile(target+".hashes", []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hostileSource{info: hostileInfo("bk-0123456789ab", strings.Repeat("../", 40)+strings.TrimPrefix(target, "/"))}
	h.mapBody = func(w http.ResponseWriter) {
		mw, _ := remote.NewMapWriter(w, remote.MapHeader{Size: 64 << 10, BlockSize: 64 << 10})
		mw.Segment(0, []blockstore.Hash{{0xee, 0xee}}, nil)
		mw.End()
	}
	url, fp := startHostile(t, dir, h)
	dst := testdaemon.Start(t, nil, nil)
	refusedFromHostile(t, dst, url, fp, "want a lowercase name like vda")
	if b, err := os.ReadFile(target + ".hashes"); err != nil || string(b) != "precious" {
		t.Fatalf("a hostile source's disk name made the destination write %s.hashes: %q %v", target, b, err)
	}
}

// A map stream that claims a base (and sends SAME frames) although the
// destination named none fails the job (it used to dereference a nil
// volume and the panic killed the whole daemon).
func TestHostileBaseFrameWithoutBase(t *testing.T) {
	dir := t.TempDir()
	h := &hostileSource{info: hostileInfo("bk-0123456789ab", "vda")}
	h.mapBody = func(w http.ResponseWriter) {
		mw, _ := remote.NewMapWriter(w, remote.MapHeader{Size: 64 << 10, BlockSize: 64 << 10, Base: true})
		hs := []blockstore.Hash{{0xee}}
		mw.Segment(0, hs, hs) // a SAME frame
		mw.End()
	}
	url, fp := startHostile(t, dir, h)
	dst := testdaemon.Start(t, nil, nil)
	j := replicateFromHostile(t, dst, url, fp)
	if j.State != catalog.JobFailed || !strings.Contains(j.Error, "a base the reader did not ask for") {
		t.Fatalf("job: %s %s", j.State, j.Error)
	}
}

// A hostile source names, as its backup's server, a server of the
// destination's project, with trigger "auto" and a creation time just
// ahead: the replica must not count for that local server's policy,
// whose retention would then delete the local server's real backups.
func TestHostileServerIDTakesLocalRetentionSlots(t *testing.T) {
	dir := t.TempDir()
	dst := testdaemon.Start(t, nil, func(c *config.Config) { c.Access.SourceDirs = []string{dir} })
	img := testdisk.Sparse(t, dir, 1<<20, 70000, 0, 1<<20)
	sv := call[api.ServerView](t, dst.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	one := 1
	call[api.PolicyView](t, dst.Admin, "POST", "/v1/policies", api.PolicyRequest{Name: ptrTo("daily"), Times: []string{"02:00"}, EveryDays: &one, MaxBackups: &one})
	call[api.ServerView](t, dst.Admin, "POST", "/v1/policies/daily/bind", api.BindRequest{Server: "web1"})
	for _, j := range call[[]catalog.Job](t, dst.Admin, "POST", "/v1/policies/daily/run-now", nil) {
		if j = waitJob(t, dst.Admin, j.ID); j.State != catalog.JobSucceeded {
			t.Fatalf("local backup: %+v", j)
		}
	}
	info := hostileInfo("bk-0123456789ab", "vda")
	info.ServerID, info.Trigger, info.Created = sv.ID, catalog.TriggerAuto, time.Now().Add(12*time.Hour)
	h := &hostileSource{info: info, mapBody: func(w http.ResponseWriter) {
		mw, _ := remote.NewMapWriter(w, remote.MapHeader{Size: 64 << 10, BlockSize: 64 << 10})
		mw.End() // an all-zero disk: nothing to fetch
	}}
	url, fp := startHostile(t, dir, h)
	if j := replicateFromHostile(t, dst, url, fp); j.State != catalog.JobFailed || !strings.Contains(j.Error, "which is a server of this appliance") {
		t.Fatalf("replication of a backup claiming a local server: %+v", j)
	}
	for _, it := range call[[]scheduler.RetentionItem](t, dst.Admin, "POST", "/v1/policies/daily/retention-preview", nil) {
		t.Logf("%s %s: %s (%s)", it.Name, it.BackupID, it.Verdict, it.Reason)
		if it.Verdict == scheduler.VerdictDelete {
			t.Fatalf("a hostile replica makes local retention delete the local backup %s", it.Name)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
