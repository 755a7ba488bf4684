package replication_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/config"
	"csbs/internal/testcert"
	"csbs/internal/testdisk"
	"csbs/remote"
	"csbs/replication"
)

// Each way `remote add` can go wrong is refused with a message that
// names what is wrong, and nothing is recorded.
func TestRemoteAddRefusals(t *testing.T) {
	p := newPair(t, nil)
	other := testcert.New(t, p.dir, "other")
	projectTok := call[api.TokenView](t, p.src.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "plain"})
	revoked := call[api.TokenView](t, p.src.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "gone", Replication: true})
	call[api.TokenView](t, p.src.Admin, "DELETE", "/v1/tokens/"+revoked.ID, nil)
	colons := strings.ToUpper(p.cert.Fingerprint[:2])
	for i := 2; i < len(p.cert.Fingerprint); i += 2 {
		colons += ":" + strings.ToUpper(p.cert.Fingerprint[i:i+2])
	}
	for _, tc := range []struct {
		name, url, fp, token string
		status               int
		want                 string
	}{
		{"wrong fingerprint", p.url, other.Fingerprint, p.token, 502, "not the pinned"},
		{"unreachable", "https://" + testcert.FreePort(t), p.cert.Fingerprint, p.token, 502, "cannot reach"},
		{"bad token", p.url, p.cert.Fingerprint, "csbs_0123456789", 502, "refused the token"},
		{"revoked token", p.url, p.cert.Fingerprint, revoked.Secret, 502, "refused the token"},
		{"project token", p.url, p.cert.Fingerprint, projectTok.Secret, 502, "need a replication token"},
		{"not https", "http://" + strings.TrimPrefix(p.url, "https://"), p.cert.Fingerprint, p.token, 400, "want https://HOST:PORT"},
		{"no port", "https://127.0.0.1", p.cert.Fingerprint, p.token, 400, "want https://HOST:PORT"},
		{"short fingerprint", p.url, p.cert.Fingerprint[:40], p.token, 400, "64 hex digits"},
		{"empty token", p.url, p.cert.Fingerprint, " ", 400, "holds no token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := callErr(p.dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "src", URL: tc.url, Fingerprint: tc.fp, Token: tc.token})
			if e == nil || e.Status != tc.status || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("got %+v, want %d %q", e, tc.status, tc.want)
			}
			t.Log(e.Message)
		})
	}
	if rs := call[[]api.RemoteView](t, p.dst.Admin, "GET", "/v1/remotes", nil); len(rs) != 0 {
		t.Fatalf("refused remotes were recorded: %+v", rs)
	}
	// The fingerprint as openssl prints it is accepted.
	r := call[api.RemoteView](t, p.dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "src", URL: p.url, Fingerprint: "sha256 Fingerprint=" + colons, Token: p.token})
	if r.Fingerprint != colons || r.RemoteProject != catalog.DefaultProject || r.BlockSize != 64<<10 {
		t.Fatalf("remote: %+v", r)
	}
}

// A store of another block size cannot share blocks: refused at add.
func TestRemoteWithOtherBlockSizeRefused(t *testing.T) {
	p := newPair(t, func(c *config.Config) { c.Store.BlockSize = 16 << 10 })
	e := callErr(p.dst.Admin, "POST", "/v1/remotes", replication.AddRemoteRequest{Name: "src", URL: p.url, Fingerprint: p.cert.Fingerprint, Token: p.token})
	if e == nil || e.Status != 502 || !strings.Contains(e.Message, "16384-byte blocks") || !strings.Contains(e.Message, "store.block_size") {
		t.Fatalf("got %+v", e)
	}
}

// The remote's token is kept in a 0600 file under the data dir and
// never shown.
func TestRemoteTokenNeverShown(t *testing.T) {
	p := newPair(t, nil)
	p.addRemote(t, "src")
	for _, path := range []string{"/v1/remotes", "/v1/remotes/src", "/v1/status", "/v1/jobs"} {
		var raw any
		if err := p.dst.Admin.Do(context.Background(), "GET", path, nil, nil, &raw); err != nil {
			t.Fatal(err)
		}
		if b, _ := jsonMarshal(raw); strings.Contains(string(b), p.token) {
			t.Fatalf("GET %s shows the remote's token", path)
		}
	}
	files := findFiles(t, p.dst.Config.DataDir, p.token)
	if len(files) != 1 || files[0].mode != 0o600 || !strings.HasPrefix(files[0].path, p.dst.Config.DataDir+"/replication/remotes/") {
		t.Fatalf("token files: %+v", files)
	}
}

// A replication token reads its project's backups through the
// replication endpoints, and nothing else; other tokens cannot use
// those endpoints.
func TestReplicationTokenScope(t *testing.T) {
	p := newPair(t, nil)
	img := testdisk.Sparse(t, p.dir, 4<<20, 70000, 0, 1<<20)
	call[api.ServerView](t, p.src.Admin, "POST", "/v1/servers", api.AddServerRequest{Name: "web1", Disks: []catalog.Disk{{Name: "vda", Source: img}}})
	own := p.backup(t, "web1", false)
	// Another project's backup of other data.
	call[catalog.Project](t, p.src.Admin, "POST", "/v1/projects", api.CreateProjectRequest{Name: "p2"})
	admin2 := p.src.Client(strings.TrimSpace(p.src.Admin.Token), "p2")
	img2 := testdisk.Sparse(t, p.dir, 3<<20, 70000, 0, 2<<20)
	call[api.ServerView](t, admin2, "POST", "/v1/servers", api.AddServerRequest{Name: "secret", Disks: []catalog.Disk{{Name: "vda", Source: img2}}})
	j := call[catalog.Job](t, admin2, "POST", "/v1/backups", api.CreateBackupRequest{Server: "secret"})
	if j = waitJob(t, admin2, j.ID); j.State != catalog.JobSucceeded {
		t.Fatalf("p2 backup: %+v", j)
	}
	theirs := call[api.BackupView](t, admin2, "GET", "/v1/backups/"+j.BackupID, nil)

	repl := p.src.Client(p.token, "")
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/servers"}, {"GET", "/v1/backups"}, {"GET", "/v1/backups/" + own.ID}, {"POST", "/v1/backups"},
		{"DELETE", "/v1/backups/" + own.ID}, {"GET", "/v1/tokens"}, {"POST", "/v1/tokens"}, {"GET", "/v1/status"},
		{"POST", "/v1/restores"}, {"POST", "/v1/gc"}, {"GET", "/v1/remotes"}, {"GET", "/v1/jobs"},
	} {
		e := callErr(repl, tc.method, tc.path, struct{}{})
		if e == nil || e.Status != http.StatusForbidden || !strings.Contains(e.Message, "replication token may only pull") {
			t.Errorf("replication token on %s %s: %+v", tc.method, tc.path, e)
		}
	}
	if bs := call[[]api.BackupView](t, p.src.Admin, "GET", "/v1/backups", nil); len(bs) != 1 {
		t.Fatalf("the replication token changed something: %+v", bs)
	}
	for _, c := range []*api.Client{p.src.Admin, p.src.Client(call[api.TokenView](t, p.src.Admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "plain"}).Secret, "")} {
		if e := callErr(c, "GET", "/v1/replication/identity", nil); e == nil || e.Status != http.StatusForbidden || !strings.Contains(e.Message, "need a replication token") {
			t.Errorf("a non-replication token on the replication API: %+v", e)
		}
	}

	// Through the client a destination uses: the other project's backup
	// is unknown, and its blocks cannot be had by naming them in a backup
	// of the token's project.
	fp, _ := remote.ParseFingerprint(p.cert.Fingerprint)
	c := remote.New(p.url, fp, p.token, remote.Options{})
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Backup(ctx, theirs.ID); !isStatus(err, 404) {
		t.Fatalf("other project's backup: %v", err)
	}
	if bs, err := c.Backups(ctx, ""); err != nil || len(bs) != 1 || bs[0].ID != own.ID {
		t.Fatalf("listing: %v %+v", err, bs)
	}
	var secretHash blockstore.Hash
	hdr, err := c.Map(ctx, own.ID, "vda", "", nil, func(remote.MapHeader, int64, []blockstore.Hash) error { return nil })
	if err != nil || hdr.Size != 4<<20 {
		t.Fatalf("own map: %v %+v", err, hdr)
	}
	if _, err := c.Map(ctx, theirs.ID, "vda", "", nil, nil); !isStatus(err, 404) {
		t.Fatalf("other project's map: %v", err)
	}
	// The other project's first block, read with the admin's knowledge.
	secretHash = firstDataHash(t, p, admin2, theirs)
	err = c.Blocks(ctx, own.ID, []remote.BlockRef{{Disk: 0, Index: 0, Hash: secretHash}}, 1<<20, func(int, []byte) error { return nil })
	if !isStatus(err, 400) {
		t.Fatalf("a block of another project named in an own backup: %v", err)
	}
	if err := c.Blocks(ctx, theirs.ID, []remote.BlockRef{{Disk: 0, Index: 32, Hash: secretHash}}, 1<<20, func(int, []byte) error { return nil }); !isStatus(err, 404) {
		t.Fatalf("a block of another project's backup: %v", err)
	}

	// At the destination: the other project's backup is not found.
	p.addRemote(t, "src")
	if e := callErr(p.dst.Admin, "POST", "/v1/remotes/src/backups/"+theirs.ID+"/replicate", nil); e == nil || e.Status != 404 {
		t.Fatalf("replicating another project's backup: %+v", e)
	}
}

func isStatus(err error, status int) bool {
	var ae *remote.APIError
	return errors.As(err, &ae) && ae.Status == status
}

// firstDataHash reads, with a replication token of b's project, the hash
// of the first block with data of b's disk vda.
func firstDataHash(t *testing.T, p *pair, admin *api.Client, b api.BackupView) blockstore.Hash {
	t.Helper()
	tok := call[api.TokenView](t, admin, "POST", "/v1/tokens", api.CreateTokenRequest{Name: "peek", Replication: true})
	fp, _ := remote.ParseFingerprint(p.cert.Fingerprint)
	c := remote.New(p.url, fp, tok.Secret, remote.Options{})
	defer c.Close()
	var h blockstore.Hash
	_, err := c.Map(context.Background(), b.ID, "vda", "", nil, func(_ remote.MapHeader, _ int64, hs []blockstore.Hash) error {
		for _, x := range hs {
			if !x.IsZero() && h.IsZero() {
				h = x
			}
		}
		return nil
	})
	if err != nil || h.IsZero() {
		t.Fatalf("map of %s: %v", b.Name, err)
	}
	return h
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

type foundFile struct {
	path string
	mode os.FileMode
}

// findFiles lists the files under dir that contain needle.
func findFiles(t *testing.T, dir, needle string) []foundFile {
	t.Helper()
	var out []foundFile
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(needle)) {
			fi, _ := d.Info()
			out = append(out, foundFile{path, fi.Mode().Perm()})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
