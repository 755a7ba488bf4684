package s3packs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"csbs/blockstore"
	"csbs/blockstore/storetest"
	"csbs/internal/s3fault"
)

const (
	testKeyID  = "AKIDTESTKEYID0001"
	testSecret = "s3cr3t-Never-In-Logs-0123456789"
)

// fakeS3 is an in-memory S3 with a fault injector in front.
type fakeS3 struct {
	url    string
	faults *s3fault.Handler
}

func newFakeS3(t *testing.T) *fakeS3 {
	t.Helper()
	be := s3mem.New()
	if err := be.CreateBucket("csbs"); err != nil {
		t.Fatal(err)
	}
	h := s3fault.New(gofakes3.New(be).Server())
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fakeS3{url: srv.URL, faults: h}
}

func (f *fakeS3) config(loc string) Config {
	return Config{
		Endpoint: f.url, Bucket: "csbs", PathStyle: true,
		Prefix:      strings.Trim(loc, "/") + "/",
		Credentials: Credentials{AccessKeyID: testKeyID, SecretAccessKey: testSecret, Source: "test"},
		CacheDir:    filepath.Join(loc, "cache"), CacheBytes: 8 << 20, ChunkSize: 256 << 10,
		RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond,
	}
}

func open(t *testing.T, cfg Config) *S3Packs {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The conformance suite, with the cache, without it, and with a cache so
// small that it evicts all the time.
func TestConformance(t *testing.T) {
	f := newFakeS3(t)
	for _, variant := range []struct {
		name string
		mod  func(*Config)
	}{
		{"cached", func(*Config) {}},
		{"uncached", func(c *Config) { c.CacheDir = "" }},
		{"tiny cache", func(c *Config) { c.CacheBytes, c.ChunkSize = 96<<10, 32<<10 }},
	} {
		t.Run(variant.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, loc string) blockstore.PackStore {
				cfg := f.config(loc)
				variant.mod(&cfg)
				return open(t, cfg)
			})
		})
	}
}

func stage(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "staged.pack")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

// Transient failures (5xx, throttling, answers lost after the server
// acted, bodies cut mid-way, hung requests) are retried until the request
// succeeds, and each attempt is counted.
func TestRetriesTransientFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []s3fault.Rule
		op    string
	}{
		{"PUT 503", []s3fault.Rule{{Method: "PUT", Times: 2, Status: 503, Code: "ServiceUnavailable"}}, "put"},
		{"PUT 500 then SlowDown", []s3fault.Rule{{Method: "PUT", Times: 1, Status: 500}, {Method: "PUT", Times: 1, Status: 503, Code: "SlowDown"}}, "put"},
		{"PUT answer lost", []s3fault.Rule{{Method: "PUT", Times: 1, Lose: true}}, "put"},
		{"PUT hung", []s3fault.Rule{{Method: "PUT", Times: 1, Delay: 2 * time.Second}}, "put"},
		{"GET 502", []s3fault.Rule{{Method: "GET", KeyContains: ".pack", Times: 3, Status: 502}}, "get"},
		{"GET body cut", []s3fault.Rule{{Method: "GET", KeyContains: ".pack", Times: 2, Cut: true}}, "get"},
		{"GET hung", []s3fault.Rule{{Method: "GET", KeyContains: ".pack", Times: 1, Delay: 2 * time.Second}}, "get"},
		{"DELETE 500", []s3fault.Rule{{Method: "DELETE", Times: 2, Status: 500}}, "delete"},
		{"LIST 503", []s3fault.Rule{{Method: "GET", KeyContains: "/csbs", Times: 2, Status: 503}}, "list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeS3(t)
			cfg := f.config(t.TempDir())
			cfg.CacheDir = ""
			cfg.RequestTimeout = 300 * time.Millisecond
			s := open(t, cfg)
			defer s.Close()
			data := randBytes(200 << 10)
			ctx := context.Background()
			if tc.op != "put" {
				if err := s.Put(ctx, 9, stage(t, data), int64(len(data))); err != nil {
					t.Fatal(err)
				}
			}
			f.faults.Add(tc.rules...)
			var c blockstore.IOCounter
			ctx = blockstore.WithIOCounter(ctx, &c)
			var err error
			switch tc.op {
			case "put":
				err = s.Put(ctx, 9, stage(t, data), int64(len(data)))
			case "get":
				p := make([]byte, 100<<10)
				_, err = s.ReadAt(ctx, 9, p, 50<<10)
				if err == nil && !bytes.Equal(p, data[50<<10:150<<10]) {
					t.Fatal("bytes differ after retries")
				}
			case "delete":
				err = s.Delete(ctx, 9)
			case "list":
				n := 0
				err = s.List(ctx, func(uint64, int64) error { n++; return nil })
				if err == nil && n != 1 {
					t.Fatalf("listed %d packs, want 1", n)
				}
			}
			if err != nil {
				t.Fatalf("%s failed despite retries: %v", tc.op, err)
			}
			if s.Stats().Retries == 0 {
				t.Error("no retry counted")
			}
			st := c.Stats()
			switch tc.op {
			case "put":
				if st.Puts < 2 {
					t.Errorf("job counter: %d PUTs, want every attempt counted", st.Puts)
				}
				p := make([]byte, len(data))
				if _, err := s.ReadAt(context.Background(), 9, p, 0); err != nil || !bytes.Equal(p, data) {
					t.Fatalf("pack after retried PUT: %v", err)
				}
			case "get":
				if st.Gets < 2 {
					t.Errorf("job counter: %d GETs, want every attempt counted", st.Gets)
				}
			}
		})
	}
}

// Permanent failures come back at once (one attempt) as a *RequestError
// that wraps the kind callers branch on, names what failed and how to
// fix it, and never shows the credentials.
func TestPermanentErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rule     s3fault.Rule
		op       string
		kind     error
		attempts int
		hint     string
	}{
		{"wrong secret", s3fault.Rule{Status: 403, Code: "SignatureDoesNotMatch"}, "put", ErrAccessDenied, 1, "credentials_file"},
		{"unknown key id", s3fault.Rule{Status: 403, Code: "InvalidAccessKeyId"}, "get", ErrAccessDenied, 1, "AWS_ACCESS_KEY_ID"},
		{"no such bucket", s3fault.Rule{Status: 404, Code: "NoSuchBucket"}, "put", ErrNoSuchBucket, 1, "store.s3.bucket"},
		{"no if-none-match", s3fault.Rule{Method: "PUT", Status: 501, Code: "NotImplemented"}, "put", ErrNotImplemented, 1, "create_only = false"},
		{"missing pack", s3fault.Rule{Status: 404, Code: "NoSuchKey"}, "get", blockstore.ErrPackNotFound, 1, ""},
		{"5xx outlives retries", s3fault.Rule{Status: 503}, "put", nil, 4, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeS3(t)
			cfg := f.config(t.TempDir())
			cfg.CacheDir = ""
			cfg.MaxAttempts = 4
			s := open(t, cfg)
			defer s.Close()
			f.faults.Add(tc.rule)
			data := randBytes(10 << 10)
			var err error
			if tc.op == "put" {
				err = s.Put(context.Background(), 3, stage(t, data), int64(len(data)))
			} else {
				_, err = s.ReadAt(context.Background(), 3, make([]byte, 10), 0)
			}
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T), want a *RequestError", err, err)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("error %q does not wrap %v", err, tc.kind)
			}
			if re.Attempts != tc.attempts {
				t.Errorf("%d attempts, want %d", re.Attempts, tc.attempts)
			}
			msg := err.Error()
			for _, want := range []string{s.Key(3), f.url, "csbs", tc.hint} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			for _, secret := range []string{testSecret, testKeyID} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q shows a credential", msg)
				}
			}
		})
	}
}

// Open refuses a bucket that does not exist and credentials the server
// refuses, naming the setting to fix.
func TestOpenChecksTheBucket(t *testing.T) {
	f := newFakeS3(t)
	cfg := f.config(t.TempDir())
	cfg.Bucket = "nope"
	_, err := Open(context.Background(), cfg)
	if !errors.Is(err, ErrNoSuchBucket) || !strings.Contains(err.Error(), "store.s3.bucket") {
		t.Errorf("open of a missing bucket: %v", err)
	}
	cfg = f.config(t.TempDir())
	f.faults.Add(s3fault.Rule{Method: "HEAD", Times: 1, Status: 403})
	_, err = Open(context.Background(), cfg)
	if !errors.Is(err, ErrAccessDenied) || strings.Contains(err.Error(), testSecret) {
		t.Errorf("open with refused credentials: %v", err)
	}
	cfg.Endpoint = "ftp://x"
	if _, err := Open(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "store.s3.endpoint") {
		t.Errorf("open with a bad endpoint: %v", err)
	}
}

// A second PUT of a pack number is refused (create-only), whatever its
// content, and the first pack stays; with create-only off it overwrites.
func TestCreateOnly(t *testing.T) {
	f := newFakeS3(t)
	cfg := f.config(t.TempDir())
	cfg.CacheDir = ""
	s := open(t, cfg)
	ctx := context.Background()
	first := randBytes(5000)
	if err := s.Put(ctx, 11, stage(t, first), 5000); err != nil {
		t.Fatal(err)
	}
	err := s.Put(ctx, 11, stage(t, randBytes(5000)), 5000)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "store.s3.prefix") {
		t.Fatalf("second PUT of pack 11: %v, want ErrExists with a hint", err)
	}
	p := make([]byte, 5000)
	if _, err := s.ReadAt(ctx, 11, p, 0); err != nil || !bytes.Equal(p, first) {
		t.Fatalf("pack 11 changed after a refused PUT (err %v)", err)
	}
	// An identical pack whose first answer was lost is accepted on retry
	// (TestRetriesTransientFailures); a different one is not, even then.
	f.faults.Add(s3fault.Rule{Method: "PUT", Times: 1, Status: 500})
	if err := s.Put(ctx, 11, stage(t, randBytes(5000)), 5000); !errors.Is(err, ErrExists) {
		t.Fatalf("retried PUT of a different pack 11: %v, want ErrExists", err)
	}
	cfg.NoCreateOnly = true
	s2 := open(t, cfg)
	second := randBytes(5000)
	if err := s2.Put(ctx, 11, stage(t, second), 5000); err != nil {
		t.Fatalf("PUT without create-only: %v", err)
	}
	if _, err := s2.ReadAt(ctx, 11, p, 0); err != nil || !bytes.Equal(p, second) {
		t.Fatalf("pack 11 after an overwrite (err %v)", err)
	}
}

// Concurrent misses of one chunk share one GET.
func TestCacheMissesShareOneGet(t *testing.T) {
	f := newFakeS3(t)
	cfg := f.config(t.TempDir())
	cfg.ReadAhead = -1
	data := randBytes(1 << 20)
	plain := cfg
	plain.CacheDir = ""
	if err := open(t, plain).Put(context.Background(), 5, stage(t, data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	s := open(t, cfg)
	defer s.Close()
	f.faults.ResetCounts()
	f.faults.Add(s3fault.Rule{Method: "GET", Delay: 50 * time.Millisecond})
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			if _, err := s.ReadAt(context.Background(), 5, p, 300<<10); err != nil || !bytes.Equal(p, data[300<<10:300<<10+4096]) {
				t.Errorf("read: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := f.faults.Requests("GET"); n != 1 {
		t.Errorf("16 concurrent reads of one chunk made %d GETs, want 1", n)
	}
	p := make([]byte, 4096)
	if _, err := s.ReadAt(context.Background(), 5, p, 300<<10+8192); err != nil {
		t.Fatal(err)
	}
	if n := f.faults.Requests("GET"); n != 1 {
		t.Errorf("a read inside the cached chunk made a GET (%d in all)", n)
	}
}

// A sequential reader (restore, hydration) gets chunks fetched ahead,
// several GETs in flight, and then reads from the cache.
func TestReadAheadKeepsGetsInFlight(t *testing.T) {
	f := newFakeS3(t)
	cfg := f.config(t.TempDir())
	cfg.ChunkSize = 64 << 10
	cfg.CacheBytes = 64 << 20
	data := randBytes(4 << 20)
	plain := cfg
	plain.CacheDir = ""
	if err := open(t, plain).Put(context.Background(), 6, stage(t, data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	s := open(t, cfg)
	defer s.Close()
	f.faults.ResetCounts()
	f.faults.Add(s3fault.Rule{Method: "GET", Delay: 20 * time.Millisecond})
	p := make([]byte, 16<<10)
	for off := int64(0); off < int64(len(data)); off += int64(len(p)) {
		if _, err := s.ReadAt(context.Background(), 6, p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, data[off:off+int64(len(p))]) {
			t.Fatalf("bytes at %d differ", off)
		}
	}
	if m := f.faults.MaxInFlight(); m < 4 {
		t.Errorf("at most %d GETs were in flight during a sequential read, want several", m)
	}
	if n := f.faults.Requests("GET"); n > 64 {
		t.Errorf("%d GETs for 64 chunks: read-ahead fetched chunks twice", n)
	}
	if st := s.Stats().Cache; st.Hits < 128 {
		t.Errorf("cache stats %+v: want most of the 256 reads served locally", st)
	}
}

// Put keeps the new pack in the cache, across a restart too; reads marked
// ReadOnce still go to the bucket; the cache stays within its bound.
func TestCacheKeepsPutPacksWithinBound(t *testing.T) {
	f := newFakeS3(t)
	loc := t.TempDir()
	cfg := f.config(loc)
	cfg.CacheBytes = 3 << 20
	s := open(t, cfg)
	ctx := context.Background()
	packs := map[uint64][]byte{}
	for num := uint64(1); num <= 5; num++ {
		packs[num] = randBytes(1 << 20)
		if err := s.Put(ctx, num, stage(t, packs[num]), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	f.faults.ResetCounts()
	p := make([]byte, 1000)
	for num := uint64(3); num <= 5; num++ {
		if _, err := s.ReadAt(ctx, num, p, 5000); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.faults.Requests("GET"); n != 0 {
		t.Errorf("reads of the 3 newest packs made %d GETs, want 0 (kept since Put)", n)
	}
	if _, err := s.ReadAt(blockstore.WithReadHint(ctx, blockstore.ReadOnce), 5, p, 5000); err != nil {
		t.Fatal(err)
	}
	if n := f.faults.Requests("GET"); n != 1 {
		t.Errorf("a ReadOnce read made %d GETs, want 1: scrub must read the bucket", n)
	}
	if st := s.Stats().Cache; st.Bytes > cfg.CacheBytes {
		t.Errorf("cache holds %d bytes, bound %d", st.Bytes, cfg.CacheBytes)
	}
	if du := dirBytes(t, cfg.CacheDir); du > cfg.CacheBytes {
		t.Errorf("cache directory holds %d bytes, bound %d", du, cfg.CacheBytes)
	}
	s.Close()
	s = open(t, cfg)
	defer s.Close()
	f.faults.ResetCounts()
	if _, err := s.ReadAt(ctx, 5, p, 5000); err != nil || !bytes.Equal(p, packs[5][5000:6000]) {
		t.Fatal(err)
	}
	if n := f.faults.Requests("GET"); n != 0 {
		t.Errorf("after a restart the newest pack needed %d GETs, want 0", n)
	}
	if _, err := s.ReadAt(ctx, 1, p, 5000); err != nil || !bytes.Equal(p, packs[1][5000:6000]) {
		t.Fatalf("evicted pack: %v", err)
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// Consecutive pack numbers spread over key prefixes.
func TestKeysSpread(t *testing.T) {
	s := &S3Packs{cfg: Config{Prefix: "p/"}}
	prefixes := map[string]bool{}
	for num := uint64(1); num <= 256; num++ {
		k := s.Key(num)
		got, ok := s.parseKey(k)
		if !ok || got != num {
			t.Fatalf("key %q parses to %d, %v", k, got, ok)
		}
		prefixes[k[:len("p/packs/xx")]] = true
	}
	if len(prefixes) < 128 {
		t.Errorf("256 consecutive packs under %d prefixes, want most of 256", len(prefixes))
	}
}

// A whole block store on the bucket: backups and reads never list the
// bucket (listing is for GC's orphan pass and rebuild-index), and the
// job's counter sees the PUTs and GETs.
func TestNoListingOnHotPaths(t *testing.T) {
	f := newFakeS3(t)
	cfg := f.config(t.TempDir())
	cfg.CacheBytes = 1 << 20 // smaller than the data: reads go to the bucket
	s, err := blockstore.Open(t.TempDir(), blockstore.Options{BlockSize: 4096, PackSize: 256 << 10, MinFree: 1 << 20, Packs: open(t, cfg)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := randBytes(4 << 20)
	var c blockstore.IOCounter
	ctx := blockstore.WithIOCounter(context.Background(), &c)
	f.faults.ResetCounts()
	pm, err := s.Ingest(ctx, memDisk(d), blockstore.IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []*blockstore.PendingMap{pm}, nil); err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenVolume(pm.Info.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(d))
	if _, err := v.ReadAtContext(ctx, got, 0); err != nil || !bytes.Equal(got, d) {
		t.Fatalf("read back: %v", err)
	}
	if n := s3Stats(s).Requests[OpList]; n != 0 {
		t.Errorf("backup and read listed the bucket %d times", n)
	}
	st := c.Stats()
	if st.Puts < 16 || st.PutBytes < 4<<20 {
		t.Errorf("job counter after a 4 MiB backup: %+v", st)
	}
	if st.Gets == 0 {
		t.Errorf("job counter after reading past the cache: %+v", st)
	}
}

func s3Stats(s *blockstore.Store) Stats { return s.Packs().(*S3Packs).Stats() }

type memDisk []byte

func (m memDisk) Size() int64 { return int64(len(m)) }
func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Credentials come from a TOML file readable by its owner only, or from
// the environment; errors name the file and key, never a value.
func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	good := fmt.Sprintf("access_key_id = %q\nsecret_access_key = %q\n", testKeyID, testSecret)
	for _, tc := range []struct {
		name    string
		file    string
		env     map[string]string
		wantErr string
	}{
		{"file", write("ok", good, 0o600), nil, ""},
		{"environment", "", map[string]string{"AWS_ACCESS_KEY_ID": testKeyID, "AWS_SECRET_ACCESS_KEY": testSecret}, ""},
		{"nothing", "", nil, "AWS_ACCESS_KEY_ID"},
		{"readable by others", write("open", good, 0o644), nil, "chmod 600"},
		{"missing file", filepath.Join(dir, "none"), nil, "no such file"},
		{"no secret", write("nosecret", fmt.Sprintf("access_key_id = %q\n", testKeyID), 0o600), nil, "secret_access_key is missing"},
		{"unknown key", write("unknown", good+"region = \"x\"\n", 0o600), nil, `unknown key "region"`},
		{"bad TOML quoting the secret", write("bad", "access_key_id = "+testKeyID+"\nsecret_access_key = "+testSecret+"\n", 0o600), nil, "not valid TOML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadCredentials(tc.file, env(tc.env))
			if tc.wantErr == "" {
				if err != nil || c.AccessKeyID != testKeyID || c.SecretAccessKey != testSecret {
					t.Fatalf("got %v, %v", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one that says %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), testKeyID) {
				t.Errorf("error %q shows a credential", err)
			}
		})
	}
}

// Credentials and configs print and log without the secret.
func TestCredentialsNeverPrinted(t *testing.T) {
	c := Credentials{AccessKeyID: testKeyID, SecretAccessKey: testSecret, Source: "f"}
	cfg := Config{Endpoint: "http://x", Bucket: "b", Credentials: c}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("open", "creds", c, "config", cfg)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("open", "creds", c, "config", cfg)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%v %+v", cfg, cfg), logged.String()} {
		if strings.Contains(s, testSecret) || strings.Contains(s, testKeyID) {
			t.Errorf("printed credentials: %s", s)
		}
	}
}
