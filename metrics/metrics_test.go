package metrics

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// source reports a fixed snapshot and remembers how it was asked.
type source struct {
	mu       sync.Mutex
	snap     Snapshot
	calls    int
	deadline bool
}

func (s *source) MetricsSnapshot(ctx context.Context) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	_, s.deadline = ctx.Deadline()
	return s.snap
}

// scrape fetches /metrics the way Prometheus does and returns every
// sample as "name{label="value",...}" -> value.
func scrape(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCollector: the figures read at scrape time, sample by sample; a
// ratio without a denominator and the object store's figures without the
// s3 backend are left out rather than reported as 0.
func TestCollector(t *testing.T) {
	full := Snapshot{
		Jobs:              map[[2]string]int{{"backup", "succeeded"}: 3, {"backup", "failed"}: 1, {"gc", "running"}: 1},
		StoreLogicalBytes: 4000, StoreDataBytes: 3000, StoreDiskBytes: 1000, StoreFreeBytes: 9000,
		CacheHits: 30, CacheMisses: 10,
		NBDConnections: 2, NBDReadBytes: 111, NBDWrittenBytes: 222, NBDReadRequests: 7, NBDReadErrors: 1, NBDWriteErrors: 2,
		Backups:        map[string]int{"available": 4, "deleting": 1},
		DamagedBackups: 1,
	}
	withS3 := full
	withS3.ObjectStore = &ObjectStore{
		Requests: map[string]int64{"PUT": 5, "GET": 9}, Failures: map[string]int64{"GET": 1}, Retries: 2,
		BytesUp: 500, BytesDown: 900, CacheHits: 6, CacheMiss: 3, CacheBytes: 64, CacheLimit: 128,
	}
	cases := []struct {
		name   string
		snap   Snapshot
		want   map[string]float64
		absent []string
	}{
		{"every figure", full, map[string]float64{
			`csbs_jobs{kind="backup",state="succeeded"}`: 3,
			`csbs_jobs{kind="backup",state="failed"}`:    1,
			`csbs_jobs{kind="gc",state="running"}`:       1,
			`csbs_backups{status="available"}`:           4,
			`csbs_backups{status="deleting"}`:            1,
			`csbs_backups_damaged`:                       1,
			`csbs_store_logical_bytes`:                   4000,
			`csbs_store_data_bytes`:                      3000,
			`csbs_store_disk_bytes`:                      1000,
			`csbs_store_free_bytes`:                      9000,
			`csbs_store_dedupe_ratio`:                    4,
			`csbs_block_cache_hits_total`:                30,
			`csbs_block_cache_misses_total`:              10,
			`csbs_block_cache_hit_ratio`:                 0.75,
			`csbs_nbd_connections`:                       2,
			`csbs_nbd_read_bytes_total`:                  111,
			`csbs_nbd_written_bytes_total`:               222,
			`csbs_nbd_read_requests_total`:               7,
			`csbs_nbd_errors_total{op="read"}`:           1,
			`csbs_nbd_errors_total{op="write"}`:          2,
		}, []string{`csbs_object_store_retries_total`, `csbs_pack_cache_bytes`}},
		{"empty store", Snapshot{}, map[string]float64{
			`csbs_store_disk_bytes`:       0,
			`csbs_block_cache_hits_total`: 0,
			`csbs_backups_damaged`:        0,
		}, []string{`csbs_store_dedupe_ratio`, `csbs_block_cache_hit_ratio`, `csbs_object_store_retries_total`}},
		{"s3 backend", withS3, map[string]float64{
			`csbs_object_store_requests_total{op="PUT"}`:      5,
			`csbs_object_store_requests_total{op="GET"}`:      9,
			`csbs_object_store_failures_total{op="GET"}`:      1,
			`csbs_object_store_retries_total`:                 2,
			`csbs_object_store_bytes_total{direction="up"}`:   500,
			`csbs_object_store_bytes_total{direction="down"}`: 900,
			`csbs_pack_cache_hits_total`:                      6,
			`csbs_pack_cache_misses_total`:                    3,
			`csbs_pack_cache_bytes`:                           64,
			`csbs_pack_cache_limit_bytes`:                     128,
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := &source{snap: tc.snap}
			got := scrape(t, New(src, "v9.9-test"))
			for k, v := range tc.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s reported, want it left out", k)
				}
			}
			if src.calls != 1 || !src.deadline {
				t.Errorf("source asked %d times (want once per scrape), with a deadline %v", src.calls, src.deadline)
			}
		})
	}
}

// TestEventMetrics: counters the daemon updates as things happen come
// out under their names, next to the build info and the Go and process
// collectors.
func TestEventMetrics(t *testing.T) {
	m := New(&source{}, "v9.9-test")
	m.BackupReadBytes.Add(100)
	m.BackupDuration.WithLabelValues("manual").Observe(2)
	m.JobsFinished.WithLabelValues("backup", "succeeded").Inc()
	m.HydrationBytes.Add(65536)
	m.GCLastSuccess.Set(1700000000)
	m.JobStoreRequests.WithLabelValues("backup", "put").Add(3)
	got := scrape(t, m)
	for k, v := range map[string]float64{
		`csbs_build_info{version="v9.9-test"}`:                      1,
		`csbs_backup_read_bytes_total`:                              100,
		`csbs_backup_duration_seconds_count{trigger="manual"}`:      1,
		`csbs_backup_duration_seconds_sum{trigger="manual"}`:        2,
		`csbs_jobs_finished_total{kind="backup",state="succeeded"}`: 1,
		`csbs_hydration_bytes_total`:                                65536,
		`csbs_gc_last_success_timestamp_seconds`:                    1700000000,
		`csbs_job_store_requests_total{kind="backup",op="put"}`:     3,
		`csbs_restore_bytes_total`:                                  0,
		`csbs_scrub_last_success_timestamp_seconds`:                 0,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for _, k := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := got[k]; !ok {
			t.Errorf("%s missing", k)
		}
	}
}
