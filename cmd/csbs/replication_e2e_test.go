package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testcert"
	"csbs/internal/testdisk"
	"csbs/internal/testenv"
	"csbs/internal/testproxy"
)

// tlsAppliance runs an appliance whose API also listens on TLS on a
// loopback port.
func tlsAppliance(t *testing.T, name string) (*appliance, string, testcert.Cert) {
	t.Helper()
	certDir := t.TempDir()
	cert := testcert.New(t, certDir, name)
	addr := testcert.FreePort(t)
	a := startAppliance(t, fmt.Sprintf("[api]\ntcp_listen = %q\ntls_cert = %q\ntls_key = %q\n", addr, cert.CertFile, cert.KeyFile))
	return a, addr, cert
}

// opensslFingerprint is the fingerprint line openssl prints for a
// certificate, which `remote add --fingerprint` takes as it is.
func opensslFingerprint(t *testing.T, certFile string) string {
	t.Helper()
	testenv.NeedTools(t, "openssl")
	out, err := exec.Command("openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", certFile).Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	return strings.TrimSpace(string(out))
}

type replJobJSON struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	Error     string `json:"error"`
	BackupID  string `json:"backup_id"`
	Note      string `json:"note"`
	Replicate struct {
		DataBlocks    int64 `json:"data_blocks"`
		BlocksFetched int64 `json:"blocks_fetched"`
		BlocksSkipped int64 `json:"blocks_skipped"`
		WireBytes     int64 `json:"wire_bytes"`
	} `json:"replicate"`
}

type remoteBackupJSON struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Replication struct {
		State string `json:"state"`
		Error string `json:"error"`
	} `json:"replication"`
}

// waitFetched polls a replication job until it stored at least n blocks
// (it must still be running then).
func waitFetched(t *testing.T, a *appliance, job string, n int64) {
	t.Helper()
	for {
		var j replJobJSON
		a.okJSON(&j, "job", "show", job)
		if j.Replicate.BlocksFetched >= n {
			return
		}
		if j.State != "running" && j.State != "queued" {
			t.Fatalf("replication job ended before it could be interrupted: %+v", j)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func noBackupsVisible(t *testing.T, a *appliance, when string) {
	t.Helper()
	var bs []backupInfo
	a.okJSON(&bs, "backup", "ls")
	if len(bs) != 0 {
		t.Fatalf("%s: a replica is visible before it is complete: %+v", when, bs)
	}
}

// TestReplicationE2E runs two real daemons with TLS on loopback: a
// backup is replicated through a proxy that counts the bytes on the wire,
// the destination and then the source are killed (SIGKILL) in the middle
// of the transfer and each run is started again; the replica appears only
// when complete, restores to the same bytes, is restored instantly and
// attached at the destination, and what crossed the wire in all runs is
// one transfer plus at most the requests in flight at each kill.
func TestReplicationE2E(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "openssl", "nbdinfo", "qemu-img")
	src, srcAddr, cert := tlsAppliance(t, "src")
	dst := startAppliance(t, "")
	proxy := testproxy.Start(t, srcAddr)
	img := testdisk.Ext4(t, src.dir, 128, 72, 61)
	src.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var b struct {
		idName
		Disks []struct {
			NewBytes int64 `json:"new_bytes"`
			Blocks   int64 `json:"data_blocks"`
		} `json:"disks"`
	}
	src.okJSON(&b, "backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	if b.Type != "enhanced" {
		t.Fatalf("source backup: %+v", b)
	}
	tokFile := filepath.Join(dst.dir, "src.token")
	if err := os.WriteFile(tokFile, []byte(src.ok("token", "create", "--replication", "--name", "dst", "--quiet")), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "https://" + proxy.Addr
	fp := opensslFingerprint(t, cert.CertFile)

	// remote add refuses a wrong fingerprint, an unreachable host and a
	// bad token, each with a clear one-line error.
	other := testcert.New(t, dst.dir, "other")
	dst.fails(nil, "not the pinned", "remote", "add", "src", "--url", url, "--token-file", tokFile, "--fingerprint", opensslFingerprint(t, other.CertFile))
	nowhere := "https://" + testcert.FreePort(t)
	dst.fails(nil, "cannot reach "+nowhere, "remote", "add", "src", "--url", nowhere, "--token-file", tokFile, "--fingerprint", fp)
	bad := filepath.Join(dst.dir, "bad.token")
	os.WriteFile(bad, []byte("csbs_00000000\n"), 0o600)
	dst.fails(nil, "refused the token", "remote", "add", "src", "--url", url, "--token-file", bad, "--fingerprint", fp)
	dst.ok("remote", "add", "src", "--url", url, "--token-file", tokFile, "--fingerprint", fp)
	if out := dst.ok("remote", "show", "src"); !strings.Contains(out, "status:       ok") {
		t.Fatalf("remote show:\n%s", out)
	}
	secret, _ := os.ReadFile(tokFile)
	for _, args := range [][]string{{"remote", "ls", "--json"}, {"remote", "show", "src", "--json"}, {"status", "--json"}} {
		if out := dst.ok(args...); strings.Contains(out, strings.TrimSpace(string(secret))) {
			t.Fatalf("csbs %s shows the remote's token", strings.Join(args, " "))
		}
	}

	// Run 1: kill the destination in the middle.
	var j1 replJobJSON
	dst.okJSON(&j1, "backup", "replicate", "golden", "--remote", "src", "--rate", "6MiB/s")
	waitFetched(t, dst, j1.ID, 150)
	dst.cmd.Process.Signal(syscall.SIGKILL)
	dst.cmd.Wait()
	dst.cmd = nil
	dst.start()
	noBackupsVisible(t, dst, "after the destination was killed")
	var rbs []remoteBackupJSON
	dst.okJSON(&rbs, "backup", "ls", "--remote", "src")
	if len(rbs) != 1 || rbs[0].Replication.State != "failed" || !strings.Contains(rbs[0].Replication.Error, "interrupted") {
		t.Fatalf("replication state after the kill: %+v", rbs)
	}
	// GC keeps what arrived for the next run.
	dst.ok("gc")

	// Run 2: kill the source in the middle; the job fails after its
	// retries.
	var j2 replJobJSON
	dst.okJSON(&j2, "backup", "replicate", "golden", "--remote", "src", "--rate", "6MiB/s")
	waitFetched(t, dst, j2.ID, 1)
	src.cmd.Process.Signal(syscall.SIGKILL)
	src.cmd.Wait()
	src.cmd = nil
	out, _, code := dst.run(nil, "job", "wait", j2.ID)
	if code == 0 {
		t.Fatalf("the replication survived the source's death?\n%s", out)
	}
	dst.okJSON(&j2, "job", "show", j2.ID)
	noBackupsVisible(t, dst, "after the source was killed")
	src.start()

	// Run 3 completes.
	var j3 replJobJSON
	dst.okJSON(&j3, "backup", "replicate", "golden", "--remote", "src")
	dst.ok("job", "wait", j3.ID)
	dst.okJSON(&j3, "job", "show", j3.ID)
	t.Logf("runs: %+v\n%+v\n%+v", j1, j2, j3)
	var replica struct {
		idName
		Region  string `json:"region"`
		Replica *struct {
			RemoteName     string `json:"remote_name"`
			SourceBackupID string `json:"source_backup_id"`
		} `json:"replica"`
	}
	dst.okJSON(&replica, "backup", "show", "golden")
	if replica.Type != "enhanced" || replica.Replica == nil || replica.Replica.SourceBackupID != b.ID || replica.Region != "cn-test-1" {
		t.Fatalf("replica: %+v", replica)
	}
	if show := dst.ok("backup", "show", "golden"); !strings.Contains(show, "replica:   of backup "+b.ID+" on remote src") {
		t.Fatalf("backup show of a replica:\n%s", show)
	}
	if ls := dst.ok("backup", "ls"); !strings.Contains(ls, "available,replica") {
		t.Fatalf("backup ls:\n%s", ls)
	}
	if ls := dst.ok("backup", "ls", "--remote", "src"); !strings.Contains(ls, " ok ") {
		t.Fatalf("backup ls --remote:\n%s", ls)
	}

	// What crossed the wire: one transfer of the backup's stored blocks,
	// plus per kill at most the transfer window (4 requests of 64 blocks
	// being received, 2 received batches waiting to be stored, and the
	// PutBlocks in progress, made of at most 3 batches), plus a map and
	// the JSON per run.
	stored := b.Disks[0].NewBytes
	window := 9 * 64 * stored / b.Disks[0].Blocks * 11 / 10
	mapBytes := b.Disks[0].Blocks*32 + 64<<10
	wire := proxy.Bytes()
	t.Logf("%d bytes on the wire for a backup of %d stored bytes (%d data blocks); the window is %d bytes", wire, stored, b.Disks[0].Blocks, window)
	if limit := stored + stored/20 + 2*window + 4*mapBytes; wire > limit {
		t.Fatalf("%d bytes on the wire over three runs, limit %d (one transfer of %d + the transfer window at 2 kills)", wire, limit, stored)
	}

	// The replica restores to the same bytes, normally and instantly,
	// and can be attached.
	target := filepath.Join(dst.dir, "restored.img")
	dst.ok("restore", "start", "golden", "--disk", "vda="+target, "--wait")
	if testdisk.SHA256(t, target) != testdisk.SHA256(t, img) {
		t.Fatal("the replica restores different bytes")
	}
	instant := filepath.Join(dst.dir, "instant.img")
	rid := strings.TrimSpace(dst.ok("restore", "start", "golden", "--instant", "--disk", "vda="+instant, "--quiet"))
	var exps []exportJSON
	dst.okJSON(&exps, "export", "ls")
	var uri string
	for _, e := range exps {
		if e.Kind == "instant" {
			uri = e.URI
		}
	}
	if uri == "" {
		t.Fatalf("no instant restore export: %+v", exps)
	}
	if out, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "134217728" {
		t.Fatalf("nbdinfo of the instant restore of a replica: %v %s", err, out)
	}
	dst.ok("restore", "finish", rid, "--wait")
	if testdisk.SHA256(t, instant) != testdisk.SHA256(t, img) {
		t.Fatal("the instant restore of the replica differs")
	}
	uri = strings.TrimSpace(dst.ok("backup", "attach", "golden", "--quiet"))
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare with the attached replica: %v\n%s", err, out)
	}
	dst.ok("backup", "detach", "golden")
}

// TestReplicationCLI walks the replication policy commands and the
// token kinds as a user would.
func TestReplicationCLI(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "openssl")
	src, srcAddr, cert := tlsAppliance(t, "src")
	dst := startAppliance(t, "")
	img := testdisk.Sparse(t, src.dir, 6<<20, 200000, 0, 4<<20)
	src.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	for range 2 {
		src.ok("backup", "create", "web1", "--wait")
	}
	tokFile := filepath.Join(dst.dir, "src.token")
	os.WriteFile(tokFile, []byte(src.ok("token", "create", "--replication", "--quiet")), 0o600)
	if ls := src.ok("token", "ls"); !strings.Contains(ls, "replication") {
		t.Fatalf("token ls does not show the kind:\n%s", ls)
	}
	tok := strings.TrimSpace(src.ok("token", "create", "--replication", "--name", "x", "--quiet"))
	out, _, code := src.run([]string{"CSBS_TOKEN=" + tok}, "server", "ls")
	if code == 0 {
		t.Fatalf("a replication token listed servers:\n%s", out)
	}
	dst.ok("remote", "add", "src", "--url", "https://"+srcAddr, "--token-file", tokFile, "--fingerprint", opensslFingerprint(t, cert.CertFile))
	dst.ok("replication", "create", "--name", "dr", "--remote", "src", "--server", "web1", "--last", "2", "--time", "03:00", "--rate", "50MiB/s")
	// Remotes and policies belong to a project: --project (the global
	// flag, also after the command) names another one.
	dst.ok("project", "create", "team-b")
	dst.fails(nil, `remote "src" not found`, "replication", "create", "--name", "dr", "--remote", "src", "--project", "team-b", "--time", "03:00")
	if show := dst.ok("replication", "show", "dr"); !strings.Contains(show, "the newest 2 qualifying of server web1") || !strings.Contains(show, "at most 50 MiB/s") {
		t.Fatalf("replication show:\n%s", show)
	}
	var j replJobJSON
	dst.okJSON(&j, "replication", "run-now", "dr", "--wait")
	if j.State != "succeeded" || !strings.Contains(j.Note, "2 replicated") {
		t.Fatalf("run-now: %+v", j)
	}
	var reps []map[string]any
	dst.okJSON(&reps, "replication", "ls")
	if len(reps) != 1 || reps[0]["name"] != "dr" {
		t.Fatalf("replication ls: %+v", reps)
	}
	dst.fails(nil, "used by replication dr", "remote", "rm", "src")
	dst.ok("replication", "rm", "dr")
	dst.ok("remote", "rm", "src")
	var bs []backupInfo
	dst.okJSON(&bs, "backup", "ls")
	if len(bs) != 2 {
		t.Fatalf("replicas after remote rm: %+v", bs)
	}
	// A project token uses its project's remotes but cannot add one.
	dst.ok("project", "create", "team-a")
	ptok := strings.TrimSpace(dst.ok("token", "create", "--project", "team-a", "--quiet"))
	dst.fails([]string{"CSBS_TOKEN=" + ptok}, "needs an admin token", "remote", "add", "src", "--url", "https://"+srcAddr, "--token-file", tokFile, "--fingerprint", opensslFingerprint(t, cert.CertFile))
	var rs []json.RawMessage
	dst.okJSON(&rs, "remote", "ls")
	if len(rs) != 0 {
		t.Fatalf("remotes: %s", rs)
	}
}
