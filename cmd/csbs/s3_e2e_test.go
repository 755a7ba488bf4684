package main

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"csbs/internal/radosgw"
	"csbs/internal/s3fault"
	"csbs/internal/testdisk"
)

type jobJSON struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	State   string `json:"state"`
	Error   string `json:"error"`
	Note    string `json:"note"`
	Done    int64  `json:"bytes_done"`
	StoreIO *struct {
		Puts     int64 `json:"puts"`
		PutBytes int64 `json:"put_bytes"`
		Gets     int64 `json:"gets"`
		GetBytes int64 `json:"get_bytes"`
	} `json:"store_io"`
}

// latestJob returns the newest job of a kind.
func latestJob(a *appliance, kind string) jobJSON {
	a.t.Helper()
	var js []jobJSON
	a.okJSON(&js, "job", "ls")
	for _, j := range js {
		if j.Kind == kind {
			return j
		}
	}
	a.t.Fatalf("no %s job in %+v", kind, js)
	return jobJSON{}
}

// bucketPacks lists the pack objects in the bucket: number of objects and
// bytes, and the key of the highest-numbered pack.
func bucketPacks(t *testing.T, gw *radosgw.Cluster) (int, int64, string) {
	t.Helper()
	out, err := gw.Client().ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String("csbs"), Prefix: aws.String("packs/")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToBool(out.IsTruncated) {
		t.Fatal("more than 1000 packs: the test expects fewer")
	}
	var n int
	var bytes int64
	var keys []string
	for _, o := range out.Contents {
		n++
		bytes += aws.ToInt64(o.Size)
		keys = append(keys, *o.Key)
	}
	slices.SortFunc(keys, func(a, b string) int { return strings.Compare(filepath.Base(a), filepath.Base(b)) })
	last := ""
	if len(keys) > 0 {
		last = keys[len(keys)-1]
	}
	return n, bytes, last
}

// TestS3BackendEndToEnd runs the real daemon with store.backend = "s3" on
// a real Ceph RADOS Gateway (through a fault-injecting proxy): backup,
// restore and instant restore compared byte for byte, per-job request
// accounting, retries through 5xx and delays, the gateway killed in the
// middle of a backup (the job fails cleanly, nothing half-visible, a
// rerun succeeds), GC that deletes and repacks pack objects, scrub that
// reads the bucket and names a backup damaged there, rebuild-index, and
// credentials in no log, status or error.
func TestS3BackendEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: -short (starts a Ceph cluster)")
	}
	gw := radosgw.Start(t, 0)
	gw.CreateBucket(t, "csbs")
	faults, err := s3fault.NewProxy(gw.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httptest.NewServer(faults)
	defer proxy.Close()
	creds := gw.CredentialsFile(t, t.TempDir())
	a := startAppliance(t, fmt.Sprintf(`[store]
backend = "s3"
[store.s3]
endpoint = %q
bucket = "csbs"
credentials_file = %q
pack_size = "4MiB"
cache_size = "8MiB"
`, proxy.URL, creds))
	noSecrets := func(where, text string) {
		t.Helper()
		if strings.Contains(text, gw.SecretKey) || strings.Contains(text, gw.AccessKey) {
			t.Fatalf("%s shows the S3 credentials:\n%s", where, text)
		}
	}

	img := testdisk.Ext4(t, a.dir, 64, 28, 41)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var b1 idName
	a.okJSON(&b1, "backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "b1", "--wait")
	j := latestJob(a, "backup")
	if j.StoreIO == nil || j.StoreIO.Puts == 0 {
		t.Fatalf("backup job has no PUTs recorded: %+v", j)
	}
	packs, packBytes, _ := bucketPacks(t, gw)
	if int64(packs) != j.StoreIO.Puts || packBytes != j.StoreIO.PutBytes {
		t.Errorf("the backup job counted %d PUTs of %d bytes; the bucket holds %d packs of %d bytes", j.StoreIO.Puts, j.StoreIO.PutBytes, packs, packBytes)
	}
	if perGiB := float64(j.StoreIO.Puts) / (float64(j.StoreIO.PutBytes) / (1 << 30)); perGiB > 300 {
		t.Errorf("%.0f PUTs per GiB at 4 MiB packs", perGiB)
	}
	show := a.ok("job", "show", j.ID)
	if !strings.Contains(show, "store io:") {
		t.Errorf("job show lacks the store requests:\n%s", show)
	}
	var st struct {
		Store struct {
			Backend     string `json:"backend"`
			ObjectStore *struct {
				Location string           `json:"location"`
				Requests map[string]int64 `json:"requests"`
				Retries  int64            `json:"retries"`
			} `json:"object_store"`
		} `json:"store"`
	}
	a.okJSON(&st, "status")
	if st.Store.Backend != "s3" || st.Store.ObjectStore == nil || !strings.Contains(st.Store.ObjectStore.Location, "/csbs/") {
		t.Fatalf("status: %+v", st.Store)
	}
	noSecrets("status", a.ok("status")+a.ok("status", "--json"))

	// Restores read through a cache smaller than the backup: from the bucket.
	out := t.TempDir()
	a.ok("restore", "start", "b1", "--disk", "vda="+out+"/r1.img", "--wait")
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, out+"/r1.img") {
		t.Fatal("restored disk differs from the source")
	}
	if j := latestJob(a, "restore"); j.StoreIO == nil || j.StoreIO.Gets == 0 {
		t.Errorf("restore job made no GETs: %+v", j)
	}
	var r restoreJSON
	a.okJSON(&r, "restore", "start", "b1", "--instant", "--rate", "0", "--disk", "vda="+out+"/ir.img")
	waitUntil(t, "hydration from the bucket", 60*time.Second, func() bool {
		a.okJSON(&r, "restore", "show", r.ID)
		return r.State == "complete" || r.State == "failed"
	})
	a.okJSON(&r, "restore", "finish", r.ID)
	if r.State != "succeeded" || testdisk.SHA256(t, img) != testdisk.SHA256(t, out+"/ir.img") {
		t.Fatalf("instant restore: %+v, or the target differs", r)
	}

	// 5xx answers and slow GETs: retried, the backup succeeds.
	testdisk.Modify(t, img, 0.05, 1)
	faults.Add(s3fault.Rule{Method: "PUT", Times: 3, Status: 503, Code: "ServiceUnavailable"},
		s3fault.Rule{Method: "PUT", Times: 2, Status: 500}, s3fault.Rule{Method: "GET", Times: 5, Delay: 300 * time.Millisecond})
	a.ok("backup", "create", "web1", "--name", "b2", "--wait")
	faults.Clear()
	a.okJSON(&st, "status")
	if st.Store.ObjectStore.Retries < 5 {
		t.Errorf("status counts %d retries after 5 injected failures", st.Store.ObjectStore.Retries)
	}

	// The gateway dies in the middle of a backup: the job fails with a
	// clear error, no backup appears, and a rerun succeeds.
	testdisk.Modify(t, img, 0.4, 2)
	var before []idName
	a.okJSON(&before, "backup", "ls")
	puts := faults.Requests("PUT")
	faults.Add(s3fault.Rule{Method: "PUT", Delay: 400 * time.Millisecond})
	var jb jobJSON
	a.okJSON(&jb, "backup", "create", "web1", "--name", "b3")
	// PUTs go one after another: when the third arrives, two packs are
	// in the bucket, orphans once the backup fails.
	waitUntil(t, "the third PUT of the backup", 60*time.Second, func() bool { return faults.Requests("PUT") > puts+2 })
	gw.KillGateway()
	waitUntil(t, "the backup to fail", 90*time.Second, func() bool {
		a.okJSON(&jb, "job", "show", jb.ID)
		return jb.State != "running" && jb.State != "queued"
	})
	if jb.State != "failed" || !strings.Contains(jb.Error, "s3 PUT csbs/packs/") || !strings.Contains(jb.Error, proxy.URL) || !strings.Contains(jb.Error, "attempts") {
		t.Fatalf("backup with the gateway down: %+v", jb)
	}
	noSecrets("job error", jb.Error)
	var after []idName
	a.okJSON(&after, "backup", "ls")
	if len(after) != len(before) {
		t.Fatalf("a failed backup is visible: %+v", after)
	}
	faults.Clear()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	if err := gw.StartGateway(ctx); err != nil {
		cancel()
		t.Fatalf("restart the gateway: %v\n%s", err, gw.Logs())
	}
	cancel()
	a.ok("backup", "create", "web1", "--name", "b4", "--wait")
	a.ok("restore", "start", "b4", "--disk", "vda="+out+"/r4.img", "--wait")
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, out+"/r4.img") {
		t.Fatal("backup after the outage restores different bytes")
	}

	// GC deletes the packs only deleted backups used and the failed
	// backup's orphans, and repacks the half-dead ones: the bucket shrinks.
	other := testdisk.Ext4(t, a.dir, 16, 10, 42)
	a.ok("server", "add", "--name", "tmp1", "--disk", "vda="+other)
	a.ok("backup", "create", "tmp1", "--name", "t1", "--wait")
	_, bytesBefore, _ := bucketPacks(t, gw)
	a.ok("backup", "rm", "t1")
	a.ok("backup", "rm", "b1")
	a.ok("backup", "rm", "b2")
	a.ok("gc")
	gcJob := latestJob(a, "gc")
	m := regexp.MustCompile(`(\d+) packs deleted, (\d+) repacked`).FindStringSubmatch(gcJob.Note)
	if m == nil {
		t.Fatalf("gc note: %q", gcJob.Note)
	}
	if deleted, _ := strconv.Atoi(m[1]); deleted == 0 {
		t.Errorf("gc deleted no pack: %q", gcJob.Note)
	}
	if repacked, _ := strconv.Atoi(m[2]); repacked == 0 {
		t.Errorf("gc repacked no pack: %q", gcJob.Note)
	}
	_, bytesAfter, lastKey := bucketPacks(t, gw)
	if bytesAfter >= bytesBefore*3/4 {
		t.Errorf("bucket holds %d bytes after gc, %d before", bytesAfter, bytesBefore)
	}
	a.ok("restore", "start", "b4", "--disk", "vda="+out+"/r4b.img", "--wait")
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, out+"/r4b.img") {
		t.Fatal("backup after gc restores different bytes")
	}

	// Scrub reads the bucket: a clean pass, then damage in the bucket
	// (not in the local cache) names the backup.
	a.ok("scrub")
	if j := latestJob(a, "scrub"); !strings.Contains(j.Note, "no damage") {
		t.Fatalf("scrub: %+v", j)
	}
	damageObject(t, gw, lastKey)
	a.ok("scrub")
	if j := latestJob(a, "scrub"); !strings.Contains(j.Note, "damaged backups: b4") {
		t.Fatalf("scrub after damaging %s in the bucket: %+v", lastKey, j)
	}

	a.ok("store", "rebuild-index")
	if j := latestJob(a, "rebuild-index"); j.State != "succeeded" || !strings.Contains(j.Note, "listed") {
		t.Fatalf("rebuild-index: %+v", j)
	}
	a.stop() // the log buffer is written by the daemon until it exits
	noSecrets("daemon log", a.logs.String())
}

// damageObject flips a byte in the first block of a pack object, writing
// over it as a failing disk in the cluster would.
func damageObject(t *testing.T, gw *radosgw.Cluster, key string) {
	t.Helper()
	ctx := context.Background()
	c := gw.Client()
	got, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("csbs"), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(got.Body)
	got.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[24+32+4+20] ^= 0x55 // header, first record's hash and length, into its value
	f := filepath.Join(t.TempDir(), "damaged")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	body, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("csbs"), Key: aws.String(key), Body: body, ContentLength: aws.Int64(int64(len(b)))}); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond every 100 ms for at most limit.
func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
