package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testdisk"
)

// What a new user trips over (issue 20): each test runs the real binary.

// runBare runs the binary outside any appliance: in dir, with no CSBS_*
// variables, and returns stdout, stderr and the exit code.
func runBare(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CSBS_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// oneLine fails the test unless s is a single line containing every want.
func oneLine(t *testing.T, what, s string, want ...string) {
	t.Helper()
	s = strings.TrimSpace(s)
	if strings.Contains(s, "\n") {
		t.Errorf("%s: not one line:\n%s", what, s)
	}
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s: %q lacks %q", what, s, w)
		}
	}
}

// TestUsageErrorsAreOneLine: a mistyped flag or command is one line on
// stderr naming it as typed (--ful, not -ful) with the closest name, not
// the error twice around the whole help; --help shows the synopsis.
func TestUsageErrorsAreOneLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"backup", "create", "web1", "--ful"}, []string{"backup create: unknown flag --ful; did you mean --full?", "csbs backup create --help"}},
		{[]string{"backup", "create", "--ful", "web1", "--wait"}, []string{"unknown flag --ful"}},
		{[]string{"bakup", "ls"}, []string{`unknown command "bakup"; did you mean "backup"?`}},
		{[]string{"bakup", "ls", "--json"}, []string{`unknown command "bakup"`}},
		{[]string{"backup", "lss"}, []string{`backup: unknown command "lss"; did you mean "ls"?`}},
		{[]string{"help", "bakup"}, []string{`unknown command "bakup"; did you mean "backup"? (csbs --help lists the commands)`}},
		{[]string{"help", "backup", "lss"}, []string{`backup: unknown command "lss"; did you mean "ls"?`}},
		{[]string{"backup", "help", "lss"}, []string{`backup: unknown command "lss"; did you mean "ls"?`}},
		{[]string{"backup", "frobnicate"}, []string{`unknown command "frobnicate" (csbs backup --help lists the commands)`}},
		{[]string{"--tokn", "x", "status"}, []string{"unknown flag --tokn; did you mean --token?"}},
		{[]string{"server", "add", "--name", "web1"}, []string{"server add: --disk NAME=SOURCE (repeatable) or --qmp PATH is required"}},
		{[]string{"server", "add"}, []string{"server add: --name is required"}},
		{[]string{"policy", "create"}, []string{"policy create: --name and --time are required"}},
		{[]string{"server", "add", "--name", "web1", "--disk"}, []string{"--disk needs a value"}},
		{[]string{"policy", "create", "--name", "p", "--time", "02:00", "--every-days", "daily"}, []string{`--every-days "daily"`}},
		{[]string{"backup", "show"}, []string{"usage: csbs backup show BACKUP"}},
		{[]string{"backup", "show", "a", "b"}, []string{`unexpected argument "b"`}},
		{[]string{"restore", "start", "golden", "--disk", "vda=/tmp/x.img", "--rate", "fast"}, []string{`--rate: size "fast": want a number of bytes`}},
	}
	for _, tc := range cases {
		name := strings.Join(tc.args, " ")
		out, errOut, code := runBare(t, dir, tc.args...)
		if code != 2 {
			t.Errorf("csbs %s: exit %d, want 2 (usage)", name, code)
		}
		if out != "" {
			t.Errorf("csbs %s: printed on stdout:\n%s", name, out)
		}
		oneLine(t, "csbs "+name, errOut, tc.want...)
		if strings.Contains(errOut, " -ful") || strings.Contains(errOut, "No help topic") || strings.Contains(errOut, "Incorrect Usage") {
			t.Errorf("csbs %s: %s", name, errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"backup", "--help"}, []string{"csbs backup COMMAND [options] [arguments]", "create", "csbs backup COMMAND --help"}},
		{[]string{"backup", "create", "--help"}, []string{"USAGE:\n   csbs backup create [options] SERVER", "EXAMPLES:\n   csbs backup create web1 --wait\n   csbs backup create web1 --full"}},
		{[]string{"help", "backup", "create"}, []string{"USAGE:\n   csbs backup create [options] SERVER"}},
		{[]string{"backup", "help", "create"}, []string{"USAGE:\n   csbs backup create [options] SERVER"}},
		{[]string{"backup", "create", "web1", "--full", "--help"}, []string{"USAGE:\n   csbs backup create [options] SERVER"}},
		{[]string{"help"}, []string{"csbs [global options] COMMAND [options] [arguments]"}},
		{[]string{"help", "backup"}, []string{"csbs backup COMMAND [options] [arguments]"}},
		{[]string{"restore", "start", "--help"}, []string{"csbs restore start [options] BACKUP", "--disk DISK=TARGET"}},
		{[]string{"--help"}, []string{"csbs [global options] COMMAND [options] [arguments]", "--token-file FILE", "process list"}},
		{[]string{"backup"}, []string{"csbs backup COMMAND"}},
	} {
		out, errOut, code := runBare(t, dir, tc.args...)
		if code != 0 || errOut != "" {
			t.Errorf("csbs %s: exit %d %s", strings.Join(tc.args, " "), code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("csbs %s lacks %q:\n%s", strings.Join(tc.args, " "), w, out)
			}
		}
	}
}

// TestNoDaemonHereSaysWhereToLook: the CLI run away from the daemon's
// data dir (the natural first mistake) says that no daemon was found and
// how to point at one, not that a token file cannot be read; a data dir
// without a running daemon says that no daemon answers.
func TestNoDaemonHereSaysWhereToLook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, errOut, code := runBare(t, dir, "server", "ls")
	if code == 0 {
		t.Fatalf("server ls with no daemon: %s", out)
	}
	oneLine(t, "no data dir", errOut, "no csbs daemon found", filepath.Join(dir, "var"), "--data-dir DIR", "--config FILE", "CSBS_TOKEN")
	if strings.Contains(errOut, "run as a user who can read") {
		t.Errorf("reads as a permission problem: %s", errOut)
	}
	_, errOut, _ = runBare(t, dir, "--data-dir", filepath.Join(dir, "elsewhere"), "status")
	oneLine(t, "--data-dir", errOut, "no csbs daemon found", "(--data-dir)")

	// A data dir (with its admin token) whose daemon is not running.
	a := startAppliance(t, "")
	a.stop()
	_, errOut, code = a.run(nil, "status")
	if code == 0 {
		t.Fatal("status with the daemon stopped succeeded")
	}
	oneLine(t, "stopped daemon", errOut, "no csbs daemon answers at "+filepath.Join(a.dir, "data", "csbs.sock"), "is `csbs serve` running?")
}

// TestWaitingForAJobWhoseDaemonDies: the daemon killed while the CLI waits
// for a job is one line saying so and what to run later, not a raw
// "POST /v1/jobs/…/wait: EOF".
func TestWaitingForAJobWhoseDaemonDies(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 32, 16, 31)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	var r struct {
		JobID string `json:"job_id"`
	}
	a.okJSON(&r, "restore", "start", "golden", "--instant", "--rate", "1MiB/s", "--disk", "vda="+filepath.Join(a.dir, "ir.img"))
	wait := a.async("job", "wait", r.JobID)
	time.Sleep(500 * time.Millisecond) // let it connect: both moments must read well anyway
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	a.cmd = nil
	out, err := wait()
	if err == nil {
		t.Fatalf("job wait survived its daemon: %s", out)
	}
	oneLine(t, "job wait", out, "waiting for job "+r.JobID, "no csbs daemon answers", "csbs job show "+r.JobID)
	if strings.Contains(out, "EOF") {
		t.Errorf("raw transport error: %s", out)
	}
	a.start() // for the cleanup's graceful stop
}

type hydrateJob struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	State     string `json:"state"`
	RestoreID string `json:"restore_id"`
	Done      int64  `json:"bytes_done"`
	Total     int64  `json:"bytes_total"`
	Error     string `json:"error"`
}

type restoreView struct {
	ID         string  `json:"id"`
	State      string  `json:"state"`
	JobID      string  `json:"job_id"`
	BackupName string  `json:"backup_name"`
	Rate       int64   `json:"rate"`
	RateBps    float64 `json:"rate_bytes_per_second"`
	Done       int64   `json:"bytes_done"`
	Total      int64   `json:"bytes_total"`
	Targets    []struct {
		Export string `json:"export"`
	} `json:"targets"`
}

// TestInstantRestoreIsAJob: an instant restore's hydration is a job: in
// job ls with its progress, csbs job wait returns when the targets are
// complete, csbs job cancel cancels the restore, a restart resumes it in
// a new job. restore show gives the rate of bytes copied beside the
// limit, no export once the exports are gone, and lists name the backup.
func TestInstantRestoreIsAJob(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 32, 12, 41)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")

	// 1. job wait follows hydration to the end.
	t1 := filepath.Join(a.dir, "ir1.img")
	var r restoreView
	a.okJSON(&r, "restore", "start", "golden", "--instant", "--rate", "4MiB/s", "--disk", "vda="+t1)
	if r.JobID == "" || r.BackupName != "golden" {
		t.Fatalf("instant restore without a job: %+v", r)
	}
	var jobs []hydrateJob
	a.okJSON(&jobs, "job", "ls")
	if len(jobs) == 0 || jobs[0].ID != r.JobID || jobs[0].Kind != "hydrate" || jobs[0].State != "running" || jobs[0].RestoreID != r.ID {
		t.Fatalf("job ls: %+v, want the running hydrate job %s of %s first", jobs, r.JobID, r.ID)
	}
	show := a.ok("restore", "show", r.ID)
	for _, want := range []string{"job:      " + r.JobID, "of data copied (limit 4.0 MiB/s)", "backup:   golden (", "export:   "} {
		if !strings.Contains(show, want) {
			t.Errorf("restore show lacks %q:\n%s", want, show)
		}
	}
	a.okJSON(&r, "restore", "show", r.ID)
	if r.RateBps > 4<<20*1.1 {
		t.Errorf("restore show: copy rate %.0f B/s over the limit %d", r.RateBps, r.Rate)
	}
	if ls := a.ok("restore", "ls"); !strings.Contains(ls, r.ID+"  golden") {
		t.Errorf("restore ls does not name the backup:\n%s", ls)
	}
	var j hydrateJob
	a.okJSON(&j, "job", "wait", r.JobID)
	if j.State != "succeeded" || j.Done != j.Total || j.Total != r.Total {
		t.Fatalf("job wait: %+v (restore total %d)", j, r.Total)
	}
	a.okJSON(&r, "restore", "show", r.ID)
	if r.State != "complete" || r.Targets[0].Export == "" {
		t.Fatalf("after its job: %+v", r)
	}
	a.ok("restore", "finish", r.ID)
	id := r.ID
	r = restoreView{} // decoding into r would keep fields the answer omits
	a.okJSON(&r, "restore", "show", id)
	if r.State != "succeeded" || r.Targets[0].Export != "" {
		t.Fatalf("finished restore still names its export: %+v", r)
	}
	if show := a.ok("restore", "show", r.ID); strings.Contains(show, "export:") || strings.Contains(show, "rate:") {
		t.Errorf("restore show of a finished restore:\n%s", show)
	}
	if testdisk.SHA256(t, t1) != testdisk.SHA256(t, img) {
		t.Fatal("hydrated target differs from the disk")
	}

	// 2. job cancel cancels the restore and removes its export.
	a.okJSON(&r, "restore", "start", "golden", "--instant", "--rate", "1MiB/s", "--disk", "vda="+filepath.Join(a.dir, "ir2.img"))
	a.okJSON(&j, "job", "cancel", r.JobID)
	if j.State != "canceled" {
		t.Fatalf("job cancel: %+v", j)
	}
	id = r.ID
	r = restoreView{}
	a.okJSON(&r, "restore", "show", id)
	if r.State != "canceled" || r.Targets[0].Export != "" {
		t.Fatalf("restore after its job was canceled: %+v", r)
	}
	var es []exportJSON
	if a.okJSON(&es, "export", "ls"); len(es) != 0 {
		t.Fatalf("exports after job cancel: %+v", es)
	}

	// 3. restore cancel cancels the job.
	a.okJSON(&r, "restore", "start", "golden", "--instant", "--rate", "1MiB/s", "--disk", "vda="+filepath.Join(a.dir, "ir3.img"))
	a.ok("restore", "cancel", r.ID)
	if a.okJSON(&j, "job", "show", r.JobID); j.State != "canceled" {
		t.Fatalf("hydrate job after restore cancel: %+v", j)
	}

	// 4. A restart resumes hydration in a new job; the old one says why
	// it ended.
	t4 := filepath.Join(a.dir, "ir4.img")
	a.okJSON(&r, "restore", "start", "golden", "--instant", "--rate", "2MiB/s", "--disk", "vda="+t4)
	first := r.JobID
	a.stop()
	a.start()
	a.okJSON(&j, "job", "show", first)
	if j.State != "canceled" || !strings.Contains(j.Error, "the daemon shut down") {
		t.Fatalf("hydrate job across a restart: %+v", j)
	}
	a.okJSON(&r, "restore", "show", r.ID)
	if r.State != "running" || r.JobID == "" || r.JobID == first {
		t.Fatalf("restore after a restart: %+v (first job %s)", r, first)
	}
	a.ok("restore", "finish", r.ID, "--wait")
	if testdisk.SHA256(t, t4) != testdisk.SHA256(t, img) {
		t.Fatal("target hydrated across a restart differs from the disk")
	}
}

// TestRestoreStartChecksTargetAtOnce: what a normal restore's job would
// refuse when it opens its target is refused by restore start itself,
// with or without --wait, and nothing is recorded.
func TestRestoreStartChecksTargetAtOnce(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 4<<20, 51, 0)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	a.ok("backup", "create", "web1", "--name", "b1", "--wait")
	full := filepath.Join(a.dir, "full.img")
	os.WriteFile(full, []byte("data the user keeps"), 0o600)
	a.fails(nil, "not empty (use --force to overwrite)", "restore", "start", "b1", "--disk", "vda="+full)
	a.fails(nil, "it is a character device", "restore", "start", "b1", "--disk", "vda=/dev/null")
	a.fails(nil, "it is a directory", "restore", "start", "b1", "--disk", "vda="+a.dir)
	var rs []restoreView
	if a.okJSON(&rs, "restore", "ls"); len(rs) != 0 {
		t.Fatalf("refused restores were recorded: %+v", rs)
	}
	if b, _ := os.ReadFile(full); string(b) != "data the user keeps" {
		t.Fatal("refused restore touched the target")
	}
	a.ok("restore", "start", "b1", "--disk", "vda="+full, "--force", "--wait")
	if testdisk.SHA256(t, full) != testdisk.SHA256(t, img) {
		t.Fatal("forced restore differs")
	}
}

// TestEveryCommandSaysWhatItDid: a command that changes something says
// so in one line (--quiet and -q before the command silence it, or leave
// only the new object's id); an empty list says how to fill it.
func TestEveryCommandSaysWhatItDid(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	for _, tc := range []struct{ args, want string }{
		{"server ls", "no servers (add one: csbs server add"},
		{"policy ls", "no policies (create one:"},
		{"backup ls", "no backups (make one:"},
		{"restore ls", "no restores"},
		{"export ls", "no exports"},
		{"job ls", "no jobs yet"},
	} {
		if out := a.ok(strings.Fields(tc.args)...); strings.TrimSpace(out) != tc.want && !strings.HasPrefix(out, tc.want) {
			t.Errorf("csbs %s on an empty appliance: %q, want %q", tc.args, out, tc.want)
		}
		var v []any
		if a.okJSON(&v, strings.Fields(tc.args)...); v == nil || len(v) != 0 {
			t.Errorf("csbs %s --json: %v, want []", tc.args, v)
		}
	}
	img := testdisk.Ext4(t, a.dir, 16, 2, 61) // browse mounts its file system
	img2 := testdisk.Sparse(t, a.dir, 4<<20, 62, 1<<20)
	mnt := filepath.Join(a.dir, "browse")
	root := os.Geteuid() == 0
	steps := []struct{ args, said string }{
		{"server add --name web1 --disk vda=" + img, "added server web1 (srv-"},
		{"server add --name web2 --disk vda=" + img2, "added server web2"},
		{"policy create --name daily --time 02:00 --every-days 1", "created policy daily (pol-"},
		{"policy bind daily web1", "bound server web1 to policy daily"},
		{"policy disable daily", "disabled policy daily"},
		{"policy enable daily", "enabled policy daily"},
		{"policy update daily --max-backups 3", "updated policy daily"},
		{"policy unbind web1", "unbound server web1"},
		{"backup create web2 --name b0 --wait", "created common backup b0 of server web2"},
		{"backup create web1 --full --enable-instant-restore --name b1 --wait", "created enhanced backup b1 of server web1"},
		{"backup protect b1", "protected backup b1"},
		{"backup protect b1 --off", "backup b1 is no longer protected"},
		{"backup attach b1", "attached backup b1 read-only over NBD"},
		{"backup detach b1", "detached backup b1"},
		{"project create team-a", "created project team-a (prj-"},
		{"backup rm b0", "deleted backup b0 (bk-"},
		{"gc", "gc job job-"},
		{"scrub --no-wait", "started scrub job job-"},
		{"policy rm daily", "removed policy daily"},
	}
	if root {
		steps = append(steps,
			struct{ args, said string }{"backup browse b1 " + mnt, "mounted disk vda of backup b1 read-only at " + mnt},
			struct{ args, said string }{"backup unbrowse " + mnt, "unmounted " + mnt})
	}
	for _, s := range steps {
		out := a.ok(strings.Fields(s.args)...)
		if !strings.HasPrefix(out, s.said) {
			t.Errorf("csbs %s said %q, want a line starting %q", s.args, out, s.said)
		}
	}
	// The same kinds of commands again, quiet.
	quiet := []struct{ args, quiet string }{
		{"server add --name web3 --disk vda=" + img, "srv-"},
		{"policy create --name weekly --time 03:00 --weekdays mon", "pol-"},
		{"policy bind weekly web3", ""},
		{"policy unbind web3", ""},
		{"backup create web3 --name b3 --wait", "bk-"},
		{"backup protect b3", ""},
		{"backup rm b3 --force", ""},
		{"server rm web3", ""},
		{"project rm team-a", ""},
		{"policy rm weekly", ""},
	}
	for i, s := range quiet {
		args := append(strings.Fields(s.args), "--quiet")
		if i%2 == 1 {
			args = append([]string{"-q"}, strings.Fields(s.args)...) // before the command
		}
		out := strings.TrimSpace(a.ok(args...))
		if s.quiet == "" && out != "" || s.quiet != "" && (!strings.HasPrefix(out, s.quiet) || strings.Contains(out, " ")) {
			t.Errorf("csbs %s: quiet output %q, want %q", strings.Join(args, " "), out, s.quiet)
		}
	}
}

// TestServerAddSaysNextBackupTypes: server add and show say in words what
// type the next backups get, instead of the IR rules' internal state.
func TestServerAddSaysNextBackupTypes(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 4<<20, 71, 0)
	out := a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	if !strings.Contains(out, "next manual backup: common (made before Instant Restore was enabled for the project; to get an Enhanced backup, run `csbs backup create web1 --full --enable-instant-restore`)") {
		t.Errorf("server add:\n%s", out)
	}
	if strings.Contains(out, "had automatic backups") || strings.Contains(out, "false") {
		t.Errorf("server add shows internal state:\n%s", out)
	}
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--wait")
	a.ok("policy", "create", "--name", "daily", "--time", "02:00", "--every-days", "1")
	a.ok("policy", "bind", "daily", "web1")
	var s struct {
		NextManual struct {
			Type string `json:"type"`
		} `json:"next_manual_backup"`
		NextAuto struct {
			Type   string `json:"type"`
			Reason string `json:"reason"`
		} `json:"next_automatic_backup"`
	}
	a.okJSON(&s, "server", "show", "web1")
	if s.NextManual.Type != "enhanced" || s.NextAuto.Type != "enhanced" {
		t.Fatalf("after a manual full backup with IR: %+v", s)
	}
	if show := a.ok("server", "show", "web1"); !strings.Contains(show, "next manual backup: enhanced") || !strings.Contains(show, "next automatic backup: enhanced") {
		t.Errorf("server show:\n%s", show)
	}
}

// TestTokenFile: a project token given in a file (--token-file or
// CSBS_TOKEN_FILE) works like CSBS_TOKEN, keeping it out of the process
// list.
func TestTokenFile(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	a.ok("project", "create", "team-a")
	secret := strings.TrimSpace(a.ok("token", "create", "--project", "team-a", "--name", "ci", "--quiet"))
	f := filepath.Join(a.dir, "team-a.token")
	os.WriteFile(f, []byte(secret+"\n"), 0o600)
	var st struct {
		Project string `json:"project"`
		Admin   bool   `json:"admin"`
	}
	for _, env := range [][]string{nil, {"CSBS_TOKEN_FILE=" + f}} {
		args := []string{"status", "--json"}
		if env == nil {
			args = append([]string{"--token-file", f}, args...)
		}
		out, errOut, code := a.run(env, args...)
		if code != 0 {
			t.Fatalf("csbs %v with %v: %s", args, env, errOut)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.Project != "team-a" || st.Admin {
			t.Fatalf("status as the file's token: %+v %v", st, err)
		}
	}
	empty := filepath.Join(a.dir, "empty.token")
	os.WriteFile(empty, nil, 0o600)
	a.fails(nil, "token file "+empty+" is empty", "--token-file", empty, "status")
	a.fails(nil, "token file: open", "--token-file", filepath.Join(a.dir, "missing"), "status")
}

// TestStatusFiguresAndLines: status (like store stats) shows the bytes the
// store's files take on disk (what du counts), not their apparent size;
// its lines are short; next runs carry a zone; policy create and policy
// show list as many next runs.
func TestStatusFiguresAndLines(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 64, 3, 81)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var created, shown struct {
		NextRuns []time.Time `json:"next_runs"`
	}
	a.okJSON(&created, "policy", "create", "--name", "daily", "--time", "02:00", "--every-days", "1", "--max-backups", "2", "--timezone", "Europe/Berlin")
	a.okJSON(&shown, "policy", "show", "daily")
	if len(created.NextRuns) == 0 || len(created.NextRuns) != len(shown.NextRuns) {
		t.Errorf("policy create lists %d next runs, policy show %d", len(created.NextRuns), len(shown.NextRuns))
	}
	a.ok("policy", "bind", "daily", "web1")
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	a.ok("gc")
	a.ok("scrub")

	store := filepath.Join(a.dir, "data", "store")
	var st statusJSON
	a.okJSON(&st, "status")
	du := allocated(t, store)
	var apparent int64
	filepath.Walk(store, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			apparent += fi.Size()
		}
		return nil
	})
	if st.Store.DiskBytes > du+4<<20 || st.Store.DiskBytes < du-4<<20 {
		t.Errorf("status: %d MiB on disk, du %d MiB", st.Store.DiskBytes>>20, du>>20)
	}
	if apparent < 4*du {
		t.Logf("apparent size %d MiB is close to du %d MiB: the distinction is not exercised", apparent>>20, du>>20)
	}
	var ss struct {
		DiskBytes int64 `json:"disk_bytes"`
	}
	if a.okJSON(&ss, "store", "stats"); ss.DiskBytes > du+4<<20 || ss.DiskBytes < du-4<<20 {
		t.Errorf("store stats: %d MiB on disk, du %d MiB", ss.DiskBytes>>20, du>>20)
	}

	// The daemon runs with Ps beyond its CPUs for goroutines blocked in
	// system calls, and as many workers (daemon.Oversubscribe).
	cpus := st.Store.CPUs
	wantProcs := cpus + min(cpus, 16)
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && n > 0 {
		wantProcs = cpus
	}
	if cpus < 1 || st.Store.GoMaxProcs != wantProcs || st.Store.Workers != wantProcs {
		t.Errorf("status: gomaxprocs %d, workers %d on %d CPUs; want %d of both", st.Store.GoMaxProcs, st.Store.Workers, cpus, wantProcs)
	}

	human := a.ok("status")
	t.Logf("csbs status:\n%s", human)
	for _, line := range strings.Split(human, "\n") {
		if len([]rune(line)) > 80 {
			t.Errorf("status line of %d characters: %q", len([]rune(line)), line)
		}
		if strings.Contains(line, "[") {
			t.Errorf("status line with a Go slice: %q", line)
		}
	}
	for _, want := range []string{"on disk (allocated)", "next run: ", "policy daily (web1)", "gc:       last ", "succeeded, freed ", "scrub:    last ", "succeeded, no damage"} {
		if !strings.Contains(human, want) {
			t.Errorf("status lacks %q", want)
		}
	}
	for _, line := range strings.Split(human, "\n") {
		if strings.HasPrefix(line, "next run: ") && !strings.Contains(line, " CET ") && !strings.Contains(line, " CEST ") {
			t.Errorf("next run without the policy's zone: %q", line)
		}
	}
}

// TestStatusWarnsOfDamagedBackupsByName: the damaged-backups warning
// names them in words, not as a Go slice.
func TestStatusWarnsOfDamagedBackupsByName(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "[store]\ncompression = \"none\"\n")
	disk := filepath.Join(a.dir, "disk.img")
	data := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(9, 9))
	for i := 1 << 20; i < 1<<20+65536; i++ {
		data[i] = byte(r.Uint32())
	}
	os.WriteFile(disk, data, 0o600)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+disk)
	a.ok("backup", "create", "web1", "--name", "golden", "--wait")
	a.stop()
	testdisk.CorruptStored(t, filepath.Join(a.dir, "data", "store"), data[1<<20+1000:1<<20+1100])
	a.start()
	a.ok("scrub")
	var st statusJSON
	a.okJSON(&st, "status")
	w := strings.Join(st.Warnings, "\n")
	if !strings.Contains(w, "damaged backups: golden (") || strings.Contains(w, "[") {
		t.Fatalf("warnings: %q", st.Warnings)
	}
	if human := a.ok("status"); !strings.Contains(human, "scrub:    last ") || !strings.Contains(human, "damaged") {
		t.Fatalf("status after a scrub that found damage:\n%s", human)
	}
}
