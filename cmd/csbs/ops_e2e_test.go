package main

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape reads the metrics listener: series (name with labels, as
// printed) -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

type statusJSON struct {
	Version     string `json:"version"`
	Admin       bool   `json:"admin"`
	JobsRunning int    `json:"jobs_running"`
	Store       struct {
		Backups      int   `json:"backups"`
		LogicalBytes int64 `json:"logical_bytes"`
		AddedBytes   int64 `json:"added_bytes"`
		DiskBytes    int64 `json:"disk_bytes"`
		FreeBytes    int64 `json:"free_bytes"`
		Workers      int   `json:"workers"`
		GoMaxProcs   int   `json:"gomaxprocs"`
		CPUs         int   `json:"cpus"`
	} `json:"store"`
	ActiveJobs []struct{ ID string } `json:"active_jobs"`
	Exports    []exportJSON          `json:"exports"`
	Mounts     []struct {
		Path string `json:"path"`
	} `json:"mounts"`
	NextRuns []struct {
		Policy  string    `json:"policy"`
		Time    time.Time `json:"time"`
		Servers []string  `json:"servers"`
	} `json:"next_runs"`
	LastGC *struct {
		State string `json:"state"`
	} `json:"last_gc"`
	Warnings []string `json:"warnings"`
}

// TestMetricsAndStatus scrapes the real metrics listener and reads csbs
// status before and after backups, a failed job, an NBD read, a FUSE read
// and a GC, and expects every figure to follow.
func TestMetricsAndStatus(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "nbdcopy")
	addr := freeTCPAddr(t)
	a := startAppliance(t, "[metrics]\nlisten = \""+addr+"\"\n")
	m0 := scrape(t, addr)
	for _, name := range []string{"csbs_backup_read_bytes_total", "csbs_store_logical_bytes", "csbs_nbd_read_bytes_total", "csbs_fuse_read_bytes_total", "csbs_nbd_connections"} {
		if v, ok := m0[name]; !ok || v != 0 {
			t.Fatalf("fresh daemon: %s = %v (present %v), want 0", name, v, ok)
		}
	}
	var st statusJSON
	a.okJSON(&st, "status")
	if st.Version == "" || !st.Admin || st.Store.Backups != 0 || st.Store.FreeBytes <= 0 || len(st.NextRuns) != 0 || st.LastGC != nil {
		t.Fatalf("fresh status: %+v", st)
	}

	const size = 8 << 20
	img := testdisk.Sparse(t, a.dir, size, 99, 0)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	gone := filepath.Join(a.dir, "gone.img")
	os.WriteFile(gone, make([]byte, 1<<20), 0o600)
	a.ok("server", "add", "--name", "web2", "--disk", "vda="+gone)
	a.ok("policy", "create", "--name", "daily", "--time", "02:00", "--every-days", "1")
	a.ok("policy", "bind", "daily", "web1")
	var b idName
	a.okJSON(&b, "backup", "create", "web1", "--full", "--enable-instant-restore", "--wait")
	os.Remove(gone)
	a.fails(nil, "", "backup", "create", "web2", "--wait")

	var es []exportJSON
	a.okJSON(&es, "backup", "attach", b.Name)
	if out, err := exec.Command("nbdcopy", es[0].URI, filepath.Join(a.dir, "copy.img")).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v %s", err, out)
	}
	fuse := false
	if _, err := os.Stat("/dev/fuse"); err == nil && os.Geteuid() == 0 {
		fuse = true
		mnt := filepath.Join(a.dir, "mnt")
		a.ok("mount", mnt)
		if _, err := os.ReadFile(filepath.Join(mnt, "default", "web1", b.Name, "vda.img")); err != nil {
			t.Fatalf("read through FUSE: %v", err)
		}
	} else if os.Getenv("CI") != "" {
		t.Fatal("CI runs as root with /dev/fuse")
	} else {
		t.Log("not root or no /dev/fuse: FUSE metrics not checked")
	}

	m := scrape(t, addr)
	want := map[string]func(float64) bool{
		`csbs_jobs_finished_total{kind="backup",state="succeeded"}`: func(v float64) bool { return v == 1 },
		`csbs_jobs_finished_total{kind="backup",state="failed"}`:    func(v float64) bool { return v == 1 },
		`csbs_jobs{kind="backup",state="failed"}`:                   func(v float64) bool { return v == 1 },
		`csbs_backups{status="available"}`:                          func(v float64) bool { return v == 1 },
		"csbs_backup_read_bytes_total":                              func(v float64) bool { return v > 0 && v <= size },
		"csbs_backup_stored_bytes_total":                            func(v float64) bool { return v > 0 },
		"csbs_store_logical_bytes":                                  func(v float64) bool { return v == size },
		"csbs_store_disk_bytes":                                     func(v float64) bool { return v > 0 },
		"csbs_store_dedupe_ratio":                                   func(v float64) bool { return v > 0 },
		"csbs_nbd_read_bytes_total":                                 func(v float64) bool { return v > 0 }, // nbdcopy skips holes
		`csbs_backup_duration_seconds_count{trigger="manual"}`:      func(v float64) bool { return v == 1 },
		"csbs_block_cache_misses_total":                             func(v float64) bool { return v > 0 },
	}
	if fuse {
		want["csbs_fuse_read_bytes_total"] = func(v float64) bool { return v >= size }
	}
	for name, ok := range want {
		if v, present := m[name]; !present || !ok(v) {
			t.Errorf("after backups: %s = %v (present %v)", name, v, present)
		}
	}

	a.okJSON(&st, "status")
	if st.Store.Backups != 1 || st.Store.LogicalBytes != size || st.Store.AddedBytes <= 0 || st.Store.DiskBytes <= 0 || len(st.Exports) != 1 {
		t.Fatalf("status after backup: %+v", st)
	}
	if len(st.NextRuns) != 1 || st.NextRuns[0].Policy != "daily" || len(st.NextRuns[0].Servers) != 1 || st.NextRuns[0].Servers[0] != "web1" || !st.NextRuns[0].Time.After(time.Now()) {
		t.Fatalf("next runs: %+v", st.NextRuns)
	}
	if fuse && len(st.Mounts) != 1 {
		t.Fatalf("mounts: %+v", st.Mounts)
	}
	if !strings.Contains(strings.Join(st.Warnings, "\n"), "1 job(s) failed in the last 24 h") {
		t.Fatalf("warnings lack the failed job: %q", st.Warnings)
	}
	human := a.ok("status")
	for _, s := range []string{"next run:", "policy daily (web1)", "1 job(s) failed", "exports:  1", "1 backup,"} {
		if !strings.Contains(human, s) {
			t.Fatalf("csbs status lacks %q:\n%s", s, human)
		}
	}
	if strings.Contains(human, "\x1b[") {
		t.Fatalf("colors when not on a terminal:\n%s", human)
	}

	a.ok("gc")
	a.okJSON(&st, "status")
	if st.LastGC == nil || st.LastGC.State != "succeeded" {
		t.Fatalf("last gc: %+v", st.LastGC)
	}
	if v := scrape(t, addr)["csbs_gc_last_success_timestamp_seconds"]; v < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Fatalf("gc timestamp metric %v", v)
	}
}
