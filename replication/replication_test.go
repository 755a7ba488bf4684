package replication_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"csbs/api"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testcert"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
	"csbs/internal/testproxy"
	"csbs/replication"
	"csbs/scheduler"
)

// pair is a source appliance with its API on TLS, reached through a
// proxy that counts the bytes on the wire, and a destination (also on
// TLS, so that a third appliance can pull from it).
type pair struct {
	src, dst *testdaemon.Daemon
	dir      string
	url      string // the source, through the proxy
	proxy    *testproxy.Proxy
	cert     testcert.Cert
	dstURL   string
	dstCert  testcert.Cert
	token    string // a replication token of the source's default project
}

func newPair(t *testing.T, mod func(*config.Config)) *pair {
	t.Helper()
	return newPairClock(t, mod, nil)
}

// newPairClock is newPair with the destination on clock.
func newPairClock(t *testing.T, mod func(*config.Config), clock scheduler.Clock) *pair {
	t.Helper()
	dir := t.TempDir()
	cert := testcert.New(t, dir, "src")
	dstCert := testcert.New(t, dir, "dst")
	addr, dstAddr := testcert.FreePort(t), testcert.FreePort(t)
	src := testdaemon.Start(t, nil, func(c *config.Config) {
		c.API.TCPListen, c.API.TLSCert, c.API.TLSKey = addr, cert.CertFile, cert.KeyFile
		c.Access.SourceDirs = []string{dir}
		c.Access.TargetDirs = []string{dir}
		if mod != nil {
			mod(c)
		}
	})
	dst := testdaemon.Start(t, clock, func(c *config.Config) {
		c.API.TCPListen, c.API.TLSCert, c.API.TLSKey = dstAddr, dstCert.CertFile, dstCert.KeyFile
		c.Access.TargetDirs = []string{dir}
	})
	tok := call[api.TokenView](t, src.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "to-dst", Replication: true})
	proxy := testproxy.Start(t, addr)
	return &pair{src: src, dst: dst, dir: dir, url: "https://" + proxy.Addr, proxy: proxy, cert: cert,
		dstURL: "https://" + dstAddr, dstCert: dstCert, token: tok.Secret}
}

func call[T any](t *testing.T, c *api.Client, method, path string, in any) T {
	t.Helper()
	var out T
	if err := c.Do(context.Background(), method, path, nil, in, &out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

func callErr(c *api.Client, method, path string, in any) *api.Error {
	err := c.Do(context.Background(), method, path, nil, in, nil)
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return nil
}

func waitJob(t *testing.T, c *api.Client, id string) catalog.Job {
	t.Helper()
	for {
		j := call[catalog.Job](t, c, "POST", "/v1/jobs/"+id+"/wait", nil)
		if j.Finished() {
			return j
		}
	}
}

// backup backs up a server of the source and returns the backup.
func (p *pair) backup(t *testing.T, server string, full bool) api.BackupView {
	t.Helper()
	j := call[catalog.Job](t, p.src.Admin, "POST", "/v1/backups", api.CreateBackupRequest{Server: server, Full: full, EnableIR: full})
	if j = waitJob(t, p.src.Admin, j.ID); j.State != catalog.JobSucceeded {
		t.Fatalf("backup of %s: %+v", server, j)
	}
	return call[api.BackupView](t, p.src.Admin, "GET", "/v1/backups/"+j.BackupID, nil)
}

func (p *pair) addRemote(t *testing.T, name string) {
	t.Helper()
	call[api.RemoteView](t, p.dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: name, URL: p.url, Fingerprint: p.cert.Fingerprint, Token: p.token})
}

// replicate replicates a backup of remote "src" and returns the job.
func (p *pair) replicate(t *testing.T, backup string) catalog.Job {
	t.Helper()
	j := call[catalog.Job](t, p.dst.Admin, "POST", "/v1/remotes/src/backups/"+backup+"/replicate", nil)
	return waitJob(t, p.dst.Admin, j.ID)
}

// restore restores a backup of d's default project to a new file and
// returns its path.
func restore(t *testing.T, d *testdaemon.Daemon, backup, disk string) string {
	t.Helper()
	target := filepath.Join(d.Dir, "restored-"+backup+"-"+disk+".img")
	os.Remove(target)
	rs := call[catalog.Restore](t, d.Admin, "POST", "/v1/restores", api.StartRestoreRequest{Backup: backup, Targets: []catalog.RestoreTarget{{Disk: disk, Target: target}}})
	if j := waitJob(t, d.Admin, rs.JobID); j.State != catalog.JobSucceeded {
		t.Fatalf("restore of %s: %+v", backup, j)
	}
	return target
}

func TestReplicateRestoresIdentically(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Ext4(t, p.dir, 48, 16, 7)
	data := testdisk.Sparse(t, p.dir, 5<<20+12345, 300000, 0, 3<<20)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}, {Name: "vdb", Source: data}}})
	b := p.backup(t, "web1", true)
	if b.Type != catalog.TypeEnhanced {
		t.Fatalf("source backup is %s", b.Type)
	}
	p.addRemote(t, "src")
	j := p.replicate(t, b.Name)
	if j.State != catalog.JobSucceeded {
		t.Fatalf("replication: %+v", j)
	}
	r := call[api.BackupView](t, p.dst.Admin, "GET", "/v1/backups/"+j.BackupID, nil)
	if r.Name != b.Name || r.Type != b.Type || !r.Created.Equal(b.Created) || r.Replica == nil || r.Region != "cn-test-1" || r.Replica.SourceBackupID != b.ID {
		t.Fatalf("replica %+v of %+v", r, b)
	}
	for disk, src := range map[string]string{"vda": img, "vdb": data} {
		if got := restore(t, p.dst, r.ID, disk); testdisk.SHA256(t, got) != testdisk.SHA256(t, src) {
			t.Fatalf("replica disk %s restores different bytes", disk)
		}
	}
	t.Logf("replication job: %s; %+v", j.Note, *j.Replicate)
	if j.Replicate.BlocksFetched == 0 || j.Replicate.DataBlocks < j.Replicate.BlocksFetched {
		t.Fatalf("replication figures: %+v", j.Replicate)
	}
	// Replicated again: refused, and the remote's listing says ok.
	if e := callErr(p.dst.Admin, "POST", "/v1/remotes/src/backups/"+b.Name+"/replicate", nil); e == nil || e.Status != 409 {
		t.Fatalf("second replication of the same backup: %v", e)
	}
	rb := call[replication.RemoteBackup](t, p.dst.Admin, "GET", "/v1/remotes/src/backups/"+b.ID, nil)
	if rb.Replication.State != catalog.ReplicaOK || rb.Replication.ReplicaID != r.ID {
		t.Fatalf("remote backup view: %+v", rb.Replication)
	}
}

// An incremental backup crosses the wire as its changed blocks plus a
// little metadata: the map goes as differences to the replica of the
// backup before it.
func TestIncrementalMovesOnlyChangedBlocks(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Ext4(t, p.dir, 64, 40, 11)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "db1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	b1 := p.backup(t, "db1", true)
	p.addRemote(t, "src")
	if j := p.replicate(t, b1.Name); j.State != catalog.JobSucceeded {
		t.Fatalf("first replication: %+v", j)
	}
	changed := testdisk.Modify(t, img, 0.01, 5)
	b2 := p.backup(t, "db1", false)
	newBytes := b2.Disks[0].NewBytes
	before := p.proxy.Bytes()
	j := p.replicate(t, b2.Name)
	if j.State != catalog.JobSucceeded {
		t.Fatalf("incremental replication: %+v", j)
	}
	wire := p.proxy.Bytes() - before
	t.Logf("%d blocks changed, %d bytes stored by the incremental backup; replication: %d bytes on the wire (proxy), %d (client); %s",
		changed, newBytes, wire, j.Replicate.WireBytes, j.Note)
	if j.Replicate.BlocksFetched != int64(changed) {
		t.Fatalf("fetched %d blocks, %d changed", j.Replicate.BlocksFetched, changed)
	}
	// Metadata: TLS handshakes, HTTP headers, the JSON of the backup, the
	// map's unchanged segments as markers, the changed entries.
	if limit := newBytes + newBytes/10 + 64<<10; wire > limit {
		t.Fatalf("%d bytes on the wire for %d bytes of changed blocks (limit %d)", wire, newBytes, limit)
	}
	if got := restore(t, p.dst, j.BackupID, "vda"); testdisk.SHA256(t, got) != testdisk.SHA256(t, img) {
		t.Fatal("incremental replica restores different bytes")
	}
}
