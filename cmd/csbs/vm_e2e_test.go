package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testvm"
)

type vmBackupJSON struct {
	idName
	Consistency string `json:"consistency"`
	Note        string `json:"note"`
	Disks       []struct {
		Name        string `json:"name"`
		ReadBytes   int64  `json:"read_bytes"`
		Bitmap      string `json:"dirty_bitmap"`
		ChangedFrom string `json:"changed_from"`
		FullRead    string `json:"full_read"`
	} `json:"disks"`
}

// vmLeftovers returns what csbs left in the VM besides one bitmap per
// disk: nodes, jobs, exports.
func vmLeftovers(t *testing.T, vm *testvm.VM) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var left []string
	for _, q := range []string{"query-named-block-nodes", "query-block-jobs", "query-block-exports", "query-jobs"} {
		raw, err := vm.Command(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := string(raw)
		if strings.Contains(s, `"node-name": "csbs-`) || strings.Contains(s, `"id": "csbs-`) || strings.Contains(s, `"device": "csbs-`) {
			left = append(left, q+": "+s)
		}
	}
	return strings.Join(left, "\n")
}

// TestLiveVMThroughCLI drives live VM backups the way a user does: server
// discover and server add --qmp, backup create --wait, backup show with
// the consistency and how the disk was read, job notes, a normal
// restore; a bad disk is refused at add time; and a daemon killed in the
// middle of a VM backup cleans the VM up when it starts again.
func TestLiveVMThroughCLI(t *testing.T) {
	t.Parallel()
	g := testvm.Build(t)
	// Reads of the image are throttled so that a backup takes long enough
	// to kill the daemon in the middle of it.
	vm := testvm.Start(t, g, testvm.Options{Rate: 30, ReadBps: 3 << 20})
	a := startAppliance(t, "")

	out := a.ok("server", "discover", "--qmp", vm.QMP)
	if !strings.Contains(out, "vda") || !strings.Contains(out, "qmp+unix:///vda?socket="+vm.QMP) {
		t.Fatalf("server discover:\n%s", out)
	}
	a.fails(nil, `no block node or device "vdz"`, "server", "add", "--name", "bad", "--disk", "vda=qmp+unix:///vdz?socket="+vm.QMP)
	a.fails(nil, "is the VM running?", "server", "add", "--name", "bad", "--qmp", filepath.Join(a.dir, "nosuch.qmp"))
	a.ok("server", "add", "--name", "vm1", "--qmp", vm.QMP)

	before := vm.Synced()
	var b1 vmBackupJSON
	a.okJSON(&b1, "backup", "create", "vm1", "--wait")
	if b1.Consistency != "fs-consistent" || len(b1.Disks) != 1 || !strings.Contains(b1.Disks[0].FullRead, "no earlier backup") {
		t.Fatalf("first backup: %+v", b1)
	}
	show := a.ok("backup", "show", b1.Name)
	for _, want := range []string{"consistency: fs-consistent", "disk vda: full read: no earlier backup of this disk", "READ"} {
		if !strings.Contains(show, want) {
			t.Fatalf("backup show lacks %q:\n%s", want, show)
		}
	}
	var jobs []struct {
		Kind, Note string
		State      string `json:"state"`
	}
	a.okJSON(&jobs, "job", "ls")
	if len(jobs) == 0 || !strings.Contains(jobs[0].Note, "disk vda: full read: no earlier backup") {
		t.Fatalf("job notes: %+v", jobs)
	}
	if err := vm.WaitSynced(context.Background(), vm.Synced()+20); err != nil {
		t.Fatal(err)
	}
	var b2 vmBackupJSON
	a.okJSON(&b2, "backup", "create", "vm1", "--wait")
	if b2.Disks[0].ChangedFrom != b1.ID || b2.Disks[0].ReadBytes >= b1.Disks[0].ReadBytes {
		t.Fatalf("second backup: %+v (first read %d)", b2, b1.Disks[0].ReadBytes)
	}
	if show := a.ok("backup", "show", b2.Name); !strings.Contains(show, "disk vda: changed blocks since backup "+b1.ID) {
		t.Fatalf("backup show of an incremental:\n%s", show)
	}
	target := filepath.Join(a.dir, "restored.raw")
	a.ok("restore", "start", b2.Name, "--disk", "vda="+target, "--wait")
	testvm.CheckImage(t, target, true, before, -1)
	if left := vmLeftovers(t, vm); left != "" {
		t.Fatalf("after two backups:\n%s", left)
	}

	// Kill the daemon while a backup of the VM reads.
	var job struct {
		ID   string `json:"id"`
		Done int64  `json:"bytes_done"`
	}
	a.okJSON(&job, "backup", "create", "vm1", "--full")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		a.okJSON(&job, "job", "show", job.ID)
		if job.Done > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backup job did not start reading")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if left := vmLeftovers(t, vm); left == "" {
		t.Fatalf("a running VM backup shows no fleecing objects in the VM; the job: %s", a.ok("job", "show", job.ID))
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	a.cmd = nil
	a.start()
	// The restarted daemon removes what the killed one added.
	for deadline := time.Now().Add(time.Minute); ; {
		left := vmLeftovers(t, vm)
		sessions, _ := os.ReadDir(filepath.Join(a.dir, "data", "vm"))
		if left == "" && len(sessions) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a daemon restart, left in the VM:\n%s\nsession dirs: %v\n%s", left, sessions, a.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// ... and the killed backup is not half-visible; the next one is
	// still incremental from the last saved backup.
	var bs []vmBackupJSON
	a.okJSON(&bs, "backup", "ls")
	if len(bs) != 2 {
		t.Fatalf("backups after the kill: %d, want the 2 saved ones", len(bs))
	}
	var b3 vmBackupJSON
	a.okJSON(&b3, "backup", "create", "vm1", "--wait")
	if b3.Disks[0].ChangedFrom != b2.ID {
		t.Fatalf("after recovery: %+v", b3.Disks[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bms, err := vm.Bitmaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bms) != 1 || bms[0].Name != b3.Disks[0].Bitmap {
		raw, _ := json.Marshal(bms)
		t.Fatalf("bitmaps in the VM: %s, want only %s", raw, b3.Disks[0].Bitmap)
	}
	// Removing the server removes the bitmap: nothing of csbs is left.
	a.ok("server", "rm", "vm1")
	if bms, err := vm.Bitmaps(ctx); err != nil || len(bms) != 0 {
		t.Fatalf("bitmaps after server rm: %+v, %v", bms, err)
	}
}
