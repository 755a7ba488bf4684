package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/config"
	"csbs/internal/testdaemon"
	"csbs/internal/testdisk"
)

// binary is the csbs binary built once for these tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "csbs-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "csbs")
	out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build csbs: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// appliance is a real `csbs serve` in a temp data dir.
type appliance struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	logs *bytes.Buffer
	env  []string
	// wd is the working directory of the daemon and every CLI call
	// ("" = the test's); global are flags put before every command.
	wd     string
	global []string
}

// startAppliance runs `csbs serve` with a config in a temp dir; "{dir}"
// in extraConfig stands for that dir.
func startAppliance(t *testing.T, extraConfig string) *appliance {
	t.Helper()
	dir := t.TempDir()
	extraConfig = strings.ReplaceAll(extraConfig, "{dir}", dir)
	cfg := filepath.Join(dir, "csbs.toml")
	conf := "region = \"cn-test-1\"\navailability_zones = [\"cn-test-1a\", \"cn-test-1b\"]\n"
	if !strings.Contains(extraConfig, "data_dir") {
		conf += "data_dir = \"data\"\n"
	}
	conf += extraConfig
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &appliance{t: t, dir: dir, logs: &bytes.Buffer{}, env: []string{"CSBS_CONFIG=" + cfg}}
	a.start()
	t.Cleanup(func() {
		a.stop()
		// Whatever the test did (kills included), the catalog's indexes
		// agree with its objects.
		if c, err := config.Load(cfg); err == nil {
			testdaemon.CheckCatalog(t, c)
		}
	})
	return a
}

func (a *appliance) start() {
	a.t.Helper()
	a.cmd = exec.Command(binary, append(append([]string{}, a.global...), "serve")...)
	a.cmd.Dir = a.wd
	a.cmd.Env = append(os.Environ(), a.env...)
	a.cmd.Stderr = a.logs
	a.cmd.Stdout = a.logs
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	// Wait until the API answers (a killed daemon leaves a stale socket).
	for i := 0; i < 400; i++ {
		if _, _, code := a.run(nil, "status"); code == 0 {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	a.t.Fatalf("daemon did not start:\n%s", a.logs)
}

func (a *appliance) stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil && !a.t.Failed() {
			a.t.Errorf("daemon exit: %v\n%s", err, a.logs)
		}
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Signal(syscall.SIGQUIT) // goroutine dump into the log
		time.Sleep(time.Second)
		_ = a.cmd.Process.Kill()
		<-done
		a.t.Errorf("daemon did not stop on SIGTERM; log:\n%s", a.logs)
	}
	a.cmd = nil
}

// run runs the CLI and returns stdout, stderr and the exit code.
func (a *appliance) run(env []string, args ...string) (string, string, int) {
	a.t.Helper()
	cmd := exec.Command(binary, append(append([]string{}, a.global...), args...)...)
	cmd.Dir = a.wd
	cmd.Env = append(append(os.Environ(), a.env...), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// ok runs the CLI and fails the test unless it succeeds.
func (a *appliance) ok(args ...string) string {
	a.t.Helper()
	out, errOut, code := a.run(nil, args...)
	if code != 0 {
		a.t.Fatalf("csbs %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// okJSON runs the CLI with --json and decodes its output.
func (a *appliance) okJSON(v any, args ...string) {
	a.t.Helper()
	out := a.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		a.t.Fatalf("csbs %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs the CLI and expects a one-line error containing want.
func (a *appliance) fails(env []string, want string, args ...string) {
	a.t.Helper()
	out, errOut, code := a.run(env, args...)
	if code == 0 {
		a.t.Fatalf("csbs %s succeeded, want error %q\n%s", strings.Join(args, " "), want, out)
	}
	line := strings.TrimSpace(errOut)
	if strings.Count(line, "\n") > 0 && !strings.HasPrefix(line, "Incorrect Usage") {
		a.t.Errorf("csbs %s: error is not one line:\n%s", strings.Join(args, " "), errOut)
	}
	if !strings.Contains(errOut, want) {
		a.t.Fatalf("csbs %s: error %q lacks %q", strings.Join(args, " "), strings.TrimSpace(errOut), want)
	}
}

type idName struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Type string `json:"type"`
}

func TestEndToEndBackupRestore(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 64, 24, 11)
	data2 := testdisk.Sparse(t, a.dir, 8<<20+4097, 50000, 0, 3<<20)

	var srv struct {
		idName
		AZ     string `json:"availability_zone"`
		Region string `json:"region"`
		Disks  []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"disks"`
	}
	a.okJSON(&srv, "server", "add", "--name", "web1", "--disk", "vda="+img, "--disk", "vdb="+data2)
	if srv.AZ != "cn-test-1a" || srv.Region != "cn-test-1" || len(srv.Disks) != 2 || srv.Disks[1].Size != 8<<20+4097 {
		t.Fatalf("server add: %+v", srv)
	}

	// Rule 1: before IR is enabled, a backup is Common; show says why and how.
	var b1 idName
	a.okJSON(&b1, "backup", "create", "web1", "--wait")
	if b1.Type != "common" || !strings.HasPrefix(b1.Name, "manualbk_") {
		t.Fatalf("first backup: %+v", b1)
	}
	show := a.ok("backup", "show", b1.Name)
	if !strings.Contains(show, "type:      common") || !strings.Contains(show, "--full --enable-instant-restore") {
		t.Fatalf("backup show of a Common backup does not say why and how:\n%s", show)
	}
	// Rule 2: a manual full backup with IR enabled is Enhanced.
	var b2 idName
	a.okJSON(&b2, "backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	if b2.Type != "enhanced" || b2.Name != "golden" {
		t.Fatalf("IR backup: %+v", b2)
	}
	var projects []struct {
		Name           string `json:"name"`
		InstantRestore bool   `json:"instant_restore"`
	}
	a.okJSON(&projects, "project", "ls")
	if len(projects) != 1 || !projects[0].InstantRestore {
		t.Fatalf("IR not enabled on the project: %+v", projects)
	}
	var list []idName
	a.okJSON(&list, "backup", "ls", "--type", "enhanced")
	if len(list) != 1 || list[0].ID != b2.ID {
		t.Fatalf("backup ls --type enhanced: %+v", list)
	}
	a.okJSON(&list, "backup", "ls", "--server", "web1")
	if len(list) != 2 || list[0].ID != b2.ID {
		t.Fatalf("backup ls --server web1 (newest first): %+v", list)
	}

	// Normal restore of both disks, verified by sha256.
	out := filepath.Join(a.dir, "restored")
	os.Mkdir(out, 0o755)
	var rs struct {
		State string `json:"state"`
	}
	a.okJSON(&rs, "restore", "start", "golden", "--disk", "vda="+out+"/vda.img", "--disk", "vdb="+out+"/vdb.img", "--wait")
	if rs.State != "succeeded" {
		t.Fatalf("restore state %q", rs.State)
	}
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, out+"/vda.img") || testdisk.SHA256(t, data2) != testdisk.SHA256(t, out+"/vdb.img") {
		t.Fatal("restored disks differ from the sources")
	}
	// Restoring again onto the now non-empty target is refused.
	a.fails(nil, "not empty", "restore", "start", "golden", "--disk", "vda="+out+"/vda.img", "--wait")
	a.ok("restore", "start", "golden", "--disk", "vda="+out+"/vda.img", "--force", "--wait")

	var jobs []struct {
		Kind  string `json:"kind"`
		State string `json:"state"`
	}
	a.okJSON(&jobs, "job", "ls")
	// Two backups, two restores: the one onto a non-empty target was
	// refused by restore start and made no job.
	if len(jobs) != 4 {
		t.Fatalf("job ls: %+v", jobs)
	}

	// The daemon restarts on the same store and still has everything.
	a.stop()
	a.start()
	a.okJSON(&list, "backup", "ls")
	if len(list) != 2 {
		t.Fatalf("after restart: %d backups", len(list))
	}
	a.ok("backup", "rm", "golden")
	a.okJSON(&list, "backup", "ls")
	if len(list) != 1 || list[0].ID != b1.ID {
		t.Fatalf("after rm: %+v", list)
	}

	// GC frees what only deleted backups used; store stats and scrub agree.
	var before, after struct {
		Blocks   int64 `json:"blocks"`
		Projects []struct {
			Backups int `json:"backups"`
		} `json:"projects"`
	}
	a.okJSON(&before, "store", "stats")
	a.ok("server", "rm", "web1")
	a.ok("backup", "rm", b1.Name)
	var gc struct {
		State string `json:"state"`
		Note  string `json:"note"`
	}
	a.okJSON(&gc, "gc")
	if gc.State != "succeeded" || !strings.Contains(gc.Note, "freed") {
		t.Fatalf("gc: %+v", gc)
	}
	a.okJSON(&after, "store", "stats")
	if before.Blocks == 0 || after.Blocks != 0 || after.Projects[0].Backups != 0 {
		t.Fatalf("store stats before %+v after %+v", before, after)
	}
	var scrub struct {
		State string `json:"state"`
		Note  string `json:"note"`
	}
	a.okJSON(&scrub, "scrub")
	if scrub.State != "succeeded" || !strings.Contains(scrub.Note, "no damage") {
		t.Fatalf("scrub: %+v", scrub)
	}
}

func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 4<<20, 10000, 0)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	a.ok("policy", "create", "--name", "daily", "--time", "02:00", "--every-days", "1", "--max-backups", "7")

	snapshot := func() string {
		var parts []string
		for _, what := range []string{"server", "policy", "backup", "project"} {
			parts = append(parts, a.ok(what, "ls", "--json"))
		}
		return strings.Join(parts, "\n")
	}
	before := snapshot()
	cases := []struct {
		want string
		args []string
	}{
		{"server \"nope\" not found", []string{"server", "show", "nope"}},
		{"server \"nope\" not found", []string{"server", "rm", "nope"}},
		{"backup \"nope\" not found", []string{"backup", "show", "nope"}},
		{"backup \"nope\" not found", []string{"backup", "rm", "nope"}},
		{"policy \"nope\" not found", []string{"policy", "show", "nope"}},
		{"policy \"nope\" not found", []string{"policy", "rm", "nope"}},
		{"server \"nope\" not found", []string{"backup", "create", "nope"}},
		{"job job-000000000000 not found", []string{"job", "show", "job-000000000000"}},
		{"server \"web1\" exists", []string{"server", "add", "--name", "web1", "--disk", "vda=" + img}},
		{"policy \"daily\" exists", []string{"policy", "create", "--name", "daily", "--time", "03:00", "--every-days", "1"}},
		{`"25:00"`, []string{"policy", "create", "--name", "p2", "--time", "25:00", "--every-days", "1"}},
		{`unknown timezone "Mars/Base"`, []string{"policy", "create", "--name", "p2", "--time", "02:00", "--every-days", "1", "--timezone", "Mars/Base"}},
		{"not both", []string{"policy", "create", "--name", "p2", "--time", "02:00", "--every-days", "1", "--max-backups", "3", "--retention-days", "3"}},
		{"less than 1 hour apart", []string{"policy", "create", "--name", "p2", "--time", "02:00", "--time", "02:30", "--every-days", "1"}},
		{"give a period", []string{"policy", "create", "--name", "p2", "--time", "02:00"}},
		{`weekday "someday"`, []string{"policy", "create", "--name", "p2", "--time", "02:00", "--weekdays", "mon,someday"}},
		{"max_backups 100000", []string{"policy", "update", "daily", "--max-backups", "100000"}},
		{"no such file", []string{"server", "add", "--name", "web2", "--disk", "vda=/no/such/disk.img"}},
		{"no such file", []string{"server", "add", "--name", "web2", "--disk", "vda=relative-missing.img"}},
		{`availability zone "cn-test-9z"`, []string{"server", "add", "--name", "web2", "--az", "cn-test-9z", "--disk", "vda=" + img}},
		{`disk name "VDA"`, []string{"server", "add", "--name", "web2", "--disk", "VDA=" + img}},
		{`server name "../evil"`, []string{"server", "add", "--name", "../evil", "--disk", "vda=" + img}},
		{"want NAME=SOURCE", []string{"server", "add", "--name", "web2", "--disk", img}},
		{"needs --full", []string{"backup", "create", "web1", "--enable-instant-restore"}},
		{"reserved", []string{"backup", "create", "web1", "--name", "autobk_1234"}},
		{"server \"nope\" not found", []string{"policy", "bind", "daily", "nope"}},
		{"not bound", []string{"policy", "unbind", "web1"}},
		{"usage: csbs backup show BACKUP", []string{"backup", "show"}},
		{"want common or enhanced", []string{"backup", "ls", "--type", "fancy"}},
		{"region \"eu-west-0\" is not served", []string{"--region", "eu-west-0", "server", "ls"}},
		{"project \"nope\" not found", []string{"--project", "nope", "server", "ls"}},
		{"unauthorized", nil},
	}
	for _, tc := range cases {
		if tc.args == nil {
			a.fails([]string{"CSBS_TOKEN=csbs_wrong"}, "missing, unknown or revoked token", "server", "ls")
			continue
		}
		a.fails(nil, tc.want, tc.args...)
	}
	if after := snapshot(); after != before {
		t.Fatalf("refused commands changed state:\nbefore %s\nafter %s", before, after)
	}
}

func TestMalformedConfigRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.toml")
	os.WriteFile(cfg, []byte("region = \"r1\"\n[store]\nblok_size = 4096\n"), 0o600)
	cmd := exec.Command(binary, "serve", "--config", cfg)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `line 3: unknown key "store.blok_size"`) {
		t.Fatalf("serve with a bad config: %v\n%s", err, out)
	}
}
