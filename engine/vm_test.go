package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/testvm"
	"csbs/qemu"
)

// admin is the caller of the tests: the admin token.
var admin = access.Caller{Admin: true, Project: catalog.DefaultProject}

// testEngine is an engine on a real store and catalog in a temp dir.
type testEngine struct {
	*Engine
	t       *testing.T
	project catalog.Project
}

func newTestEngine(t *testing.T) *testEngine {
	t.Helper()
	dir := t.TempDir()
	st, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// Short: QEMU's NBD socket lives below it (unix paths ≤ 107 bytes).
	vmDir, err := os.MkdirTemp("", "csbsvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vmDir) })
	e := &testEngine{t: t, Engine: &Engine{
		Store: st, Catalog: catalog.New(st.KV(), catalog.Options{}), Now: time.Now,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), VMDir: vmDir, Access: &access.Rules{},
	}}
	err = e.Catalog.Update(func(tx *catalog.Txn) error {
		var err error
		e.project, err = tx.CreateProject(catalog.DefaultProject, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *testEngine) addServer(name string, disks ...catalog.Disk) catalog.Server {
	e.t.Helper()
	for i := range disks {
		src, size, err := e.CheckSource(context.Background(), admin, disks[i].Source)
		if err != nil {
			e.t.Fatal(err)
		}
		disks[i].Source, disks[i].Size, disks[i].ByAdmin = src, size, true
	}
	var s catalog.Server
	err := e.Catalog.Update(func(tx *catalog.Txn) error {
		var err error
		s, err = tx.CreateServer(catalog.Server{Project: e.project.ID, Name: name, AZ: "az1", Disks: disks, Created: time.Now()})
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *testEngine) backup(s catalog.Server, full bool) (catalog.Backup, error) {
	return e.Backup(context.Background(), catalog.Job{Project: e.project.ID, ServerID: s.ID, Trigger: catalog.TriggerManual, Full: full}, nil)
}

// restoreDisk writes a backup's disk to a raw image and returns its path.
func (e *testEngine) restoreDisk(b catalog.Backup, disk string) string {
	e.t.Helper()
	d, ok := diskOf(b, disk)
	if !ok {
		e.t.Fatalf("backup %s has no disk %s", b.Name, disk)
	}
	id, err := blockstore.ParseMapID(d.MapID)
	if err != nil {
		e.t.Fatal(err)
	}
	v, err := e.Store.OpenVolume(id)
	if err != nil {
		e.t.Fatal(err)
	}
	defer v.Close()
	out := filepath.Join(e.t.TempDir(), b.ID+"-"+disk+".raw")
	f, err := os.Create(out)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(v, 0, v.Size())); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// vmClean checks that nothing csbs added is left in the VM: no node,
// job, export or bitmap but the one bitmap per disk that tracks changes
// for the next backup (want names it, "" for none).
func vmClean(t *testing.T, vm *testvm.VM, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := vm.Command(ctx, "query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), `"node-name": "csbs-`) {
		t.Fatalf("csbs nodes left in the VM: %s", raw)
	}
	for _, q := range []string{"query-block-jobs", "query-block-exports", "query-jobs"} {
		raw, err := vm.Command(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(raw) != "[]" {
			t.Fatalf("%s after the backup: %s", q, raw)
		}
	}
	bms, err := vm.Bitmaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bms {
		names = append(names, b.Name)
	}
	if want == "" && len(names) != 0 || want != "" && (len(names) != 1 || names[0] != want) {
		t.Fatalf("bitmaps in the VM: %v, want only %q", names, want)
	}
}

func (e *testEngine) noSessionFiles() {
	e.t.Helper()
	ents, err := os.ReadDir(e.VMDir)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(ents) != 0 {
		e.t.Fatalf("session files left in %s: %v", e.VMDir, ents)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestLiveVMBackupsWhileWriting backs up a running VM whose writer keeps
// appending fsynced records: every backup restores to a file system that
// checks clean and holds a prefix of the records with none torn, at least
// up to the last record durable before the backup began. The first backup
// reads the whole disk and is fs-consistent (the guest agent froze the
// file system: it needs no journal replay); the next ones read only the
// blocks the dirty bitmap marks. A clean VM restart keeps the bitmap
// (persistent in qcow2); a restart without it reads in full and says
// why. A restored CBT backup boots and its writer carries on.
func TestLiveVMBackupsWhileWriting(t *testing.T) {
	t.Parallel()
	g := testvm.Build(t)
	vm := testvm.Start(t, g, testvm.Options{Rate: 40})
	e := newTestEngine(t)
	src := "qmp+unix:///vda?socket=" + vm.QMP
	s := e.addServer("vm1", catalog.Disk{Name: "vda", Source: src})

	var atFix int64
	e.SetHooks(&Hooks{AfterPointInTime: func() { atFix = vm.Synced() }})
	backupChecked := func(b catalog.Backup, before int64, clean bool) int64 {
		t.Helper()
		img := e.restoreDisk(b, "vda")
		return testvm.CheckImage(t, img, clean, before, atFix+1)
	}

	before := vm.Synced()
	b1, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	d1 := b1.Disks[0]
	if b1.Consistency != qemu.FSConsistent {
		t.Fatalf("consistency %q (note %q), want fs-consistent: the guest agent runs", b1.Consistency, b1.Note)
	}
	if d1.ChangedFrom != "" || !strings.Contains(d1.FullRead, "no earlier backup") || !strings.Contains(b1.Note, "full read: no earlier backup") {
		t.Fatalf("first backup: changed_from %q full_read %q note %q", d1.ChangedFrom, d1.FullRead, b1.Note)
	}
	n1 := backupChecked(b1, before, true)
	vmClean(t, vm, d1.Bitmap)
	e.noSessionFiles()
	t.Logf("full: %d records, read %d of %d bytes", n1, d1.ReadBytes, d1.Size)

	// Three incrementals while the writer runs.
	prev := b1
	for i := 0; i < 3; i++ {
		if err := vm.WaitSynced(ctxT(t, time.Minute), vm.Synced()+30); err != nil {
			t.Fatal(err)
		}
		before := vm.Synced()
		b, err := e.backup(s, false)
		if err != nil {
			t.Fatal(err)
		}
		d := b.Disks[0]
		if d.ChangedFrom != prev.ID || d.FullRead != "" {
			t.Fatalf("incremental %d: changed_from %q (want %s) full_read %q", i, d.ChangedFrom, prev.ID, d.FullRead)
		}
		if d.ReadBytes == 0 || d.ReadBytes*4 > d1.ReadBytes {
			t.Fatalf("incremental %d read %d bytes, the full read %d: CBT should read only the changes", i, d.ReadBytes, d1.ReadBytes)
		}
		n := backupChecked(b, before, b.Consistency == qemu.FSConsistent)
		vmClean(t, vm, d.Bitmap)
		t.Logf("incremental %d: %d records, read %d bytes (%s)", i, n, d.ReadBytes, b.Consistency)
		prev = b
	}

	// A clean restart keeps the persistent bitmap: still incremental.
	if err := vm.Quit(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	vm = testvm.Start(t, g, testvm.Options{Disk: vm.Disk, Rate: 40})
	src2 := "qmp+unix:///vda?socket=" + vm.QMP
	s = updateSource(t, e, s, src2)
	e.SetHooks(&Hooks{AfterPointInTime: func() { atFix = vm.Synced() }})
	before = vm.Synced()
	b, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	if b.Disks[0].ChangedFrom != prev.ID {
		t.Fatalf("after a clean VM restart: changed_from %q full_read %q; the qcow2 bitmap should have survived", b.Disks[0].ChangedFrom, b.Disks[0].FullRead)
	}
	backupChecked(b, before, b.Consistency == qemu.FSConsistent)
	prev = b

	// Restarted without its bitmap (removed from the image while the VM
	// was down): full read, and the backup says why.
	if err := vm.Quit(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "bitmap", "--remove", vm.Disk, prev.Disks[0].Bitmap).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img bitmap --remove: %v\n%s", err, out)
	}
	vm = testvm.Start(t, g, testvm.Options{Disk: vm.Disk, Rate: 40})
	s = updateSource(t, e, s, "qmp+unix:///vda?socket="+vm.QMP)
	e.SetHooks(&Hooks{AfterPointInTime: func() { atFix = vm.Synced() }})
	before = vm.Synced()
	b, err = e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	if d := b.Disks[0]; d.ChangedFrom != "" || !strings.Contains(d.FullRead, "is not in the VM") || !strings.Contains(b.Note, "disk vda: full read: dirty bitmap") {
		t.Fatalf("restarted without its bitmap: changed_from %q full_read %q note %q", d.ChangedFrom, d.FullRead, b.Note)
	}
	backupChecked(b, before, b.Consistency == qemu.FSConsistent)
	vmClean(t, vm, b.Disks[0].Bitmap)

	// The CBT backup boots: its file system mounts in the guest and the
	// writer appends after its last record.
	vm.Kill()
	img := e.restoreDisk(prev, "vda")
	boot := testvm.Start(t, g, testvm.Options{Disk: img, NoAgent: true})
	if err := boot.WaitSynced(ctxT(t, time.Minute), boot.Synced()+5); err != nil {
		t.Fatalf("restored backup: %v\n%s", err, boot.Console())
	}
	if !strings.Contains(boot.Console(), "csbs-writer started at ") {
		t.Fatalf("restored backup did not run its writer:\n%s", boot.Console())
	}
}

// updateSource points a server's disk at a restarted VM's new socket.
func updateSource(t *testing.T, e *testEngine, s catalog.Server, src string) catalog.Server {
	t.Helper()
	err := e.Catalog.Update(func(tx *catalog.Txn) error {
		cur, err := tx.Server(s.Project, s.ID)
		if err != nil {
			return err
		}
		cur.Disks[0].Source = src
		s = cur
		return tx.PutServer(cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLiveVMIncrementalsEqualPausedCopies proves each CBT incremental
// equal to the disk at its point in time: the VM is paused, its disk
// copied with qemu-img, the backup fixes its point in time, and the VM
// resumes at once, so the guest writes (copy-before-write at work) while
// the backup reads; the restored backup must equal the copy byte for
// byte, and read about what the bitmap marked.
func TestLiveVMIncrementalsEqualPausedCopies(t *testing.T) {
	t.Parallel()
	g := testvm.Build(t)
	vm := testvm.Start(t, g, testvm.Options{Rate: 40, OverwriteEvery: 3, NoAgent: true, SecondDiskMiB: 16})
	e := newTestEngine(t)
	// Two disks of one VM, one named by node, one by device id, both fixed
	// in one transaction; vdb is a raw image (bitmap in memory only).
	s := e.addServer("vm2", catalog.Disk{Name: "vda", Source: "qmp+unix:///vda-fmt?socket=" + vm.QMP},
		catalog.Disk{Name: "vdb", Source: "qmp+unix:///vdb?socket=" + vm.QMP})
	ctx := ctxT(t, 5*time.Minute)

	var copyPath string
	var resumeErr error
	e.SetHooks(&Hooks{AfterPointInTime: func() {
		resumeErr = vm.Cont(ctx)
		// Let the guest write while the backup reads.
		if resumeErr == nil {
			resumeErr = vm.WaitSynced(ctx, vm.Synced()+10)
		}
	}})
	var prev catalog.Backup
	var fullRead int64
	for i := 0; i < 4; i++ {
		if i > 0 {
			if err := vm.WaitSynced(ctx, vm.Synced()+40); err != nil {
				t.Fatal(err)
			}
		}
		durable := vm.Synced()
		if err := vm.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		var dirty int64 = -1
		if i > 0 {
			bms, err := vm.Bitmaps(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, bm := range bms {
				if bm.Name == prev.Disks[0].Bitmap {
					dirty = bm.Count
				}
			}
		}
		copyPath = filepath.Join(t.TempDir(), fmt.Sprintf("paused-%d.raw", i))
		vm.CopyDisk(t, copyPath)
		copy2 := filepath.Join(t.TempDir(), fmt.Sprintf("paused-%d-vdb.raw", i))
		vm.CopyDisk2(t, copy2)
		b, err := e.backup(s, false)
		if err != nil {
			t.Fatal(err)
		}
		if resumeErr != nil {
			t.Fatal(resumeErr)
		}
		if b.Consistency != qemu.CrashConsistent || !strings.Contains(b.Note, "qga=none") && !strings.Contains(b.Note, "no guest agent") {
			t.Fatalf("without an agent: consistency %q note %q", b.Consistency, b.Note)
		}
		got, err := os.ReadFile(e.restoreDisk(b, "vda"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(copyPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("backup %d differs from the disk copied while the VM was paused at its point in time (first difference at %d)", i, firstDiff(got, want))
		}
		got2, _ := os.ReadFile(e.restoreDisk(b, "vdb"))
		want2, _ := os.ReadFile(copy2)
		if len(want2) != 16<<20 || !bytes.Equal(got2, want2) {
			t.Fatalf("backup %d disk vdb differs from its paused copy (at %d)", i, firstDiff(got2, want2))
		}
		if !strings.Contains(b.Note, "disk vdb: raw image") {
			t.Fatalf("note of a backup with a raw disk: %q", b.Note)
		}
		if i > 0 && b.Disks[1].ChangedFrom != prev.ID {
			t.Fatalf("vdb not incremental: %+v", b.Disks[1])
		}
		d := b.Disks[0]
		if i == 0 {
			fullRead = d.ReadBytes
		} else {
			if d.ChangedFrom != prev.ID {
				t.Fatalf("backup %d: changed_from %q full_read %q", i, d.ChangedFrom, d.FullRead)
			}
			// The bitmap marked dirty bytes at 64 KiB granularity, the
			// store's block size: the backup reads no more than that.
			if dirty < 0 || d.ReadBytes > dirty || d.ReadBytes == 0 {
				t.Fatalf("backup %d read %d bytes, the bitmap marked %d", i, d.ReadBytes, dirty)
			}
			t.Logf("incremental %d: read %d bytes, bitmap marked %d, full read %d", i, d.ReadBytes, dirty, fullRead)
		}
		testvm.CheckImage(t, copyPath, false, durable, -1)
		prev = b
	}
	vmClean(t, vm, prev.Disks[0].Bitmap)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestLiveVMBadInput: a socket that is not QEMU's, a VM that is not
// running, a disk the VM does not have, and a VM that dies mid-backup
// (the backup fails, nothing is saved, nothing is left behind, and the
// next backup after a restart reads in full, saying why).
func TestLiveVMBadInput(t *testing.T) {
	t.Parallel()
	g := testvm.Build(t)
	e := newTestEngine(t)
	ctx := ctxT(t, 5*time.Minute)

	// Not QEMU: a socket that greets with something else.
	notQEMU := filepath.Join(t.TempDir(), "not-qemu.sock")
	l, err := net.Listen("unix", notQEMU)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 smtp.example ESMTP\r\n"))
			c.Close()
		}
	}()
	defer wg.Wait()
	defer l.Close()
	for _, tc := range []struct{ name, src, want string }{
		{"not QEMU", "qmp+unix:///vda?socket=" + notQEMU, "not a QEMU QMP socket"},
		{"no VM", "qmp+unix:///vda?socket=" + filepath.Join(t.TempDir(), "gone.sock"), "is the VM running?"},
		{"no socket parameter", "qmp+unix:///vda", "socket=PATH"},
		{"relative socket", "qmp+unix:///vda?socket=vm.qmp", "absolute path"},
		{"unknown parameter", "qmp+unix:///vda?socket=/x&foo=1", `unknown parameter "foo"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := e.CheckSource(ctx, admin, tc.src)
			if !errors.Is(err, catalog.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckSource(%s): %v, want %q", tc.src, err, tc.want)
			}
		})
	}

	// Enough data that the read-ahead (16 MiB) cannot hold the rest of the
	// disk when the VM dies.
	vm := testvm.Start(t, g, testvm.Options{Drive: true, FillMiB: 40})
	// A disk the VM does not have: the error lists the ones it has.
	_, _, err = e.CheckSource(ctx, admin, "qmp+unix:///vdz?socket="+vm.QMP)
	if !errors.Is(err, catalog.ErrInvalid) || !strings.Contains(err.Error(), `no block node or device "vdz"`) || !strings.Contains(err.Error(), "device vda") {
		t.Fatalf("unknown node: %v", err)
	}
	// Discovery finds the -drive disk by its device id.
	found, err := e.DiscoverVM(ctx, admin, vm.QMP, "")
	if err != nil || len(found) != 1 || found[0].Name != "vda" || found[0].Ref != "vda" || found[0].Size != 64<<20 {
		t.Fatalf("discover: %+v, %v", found, err)
	}
	s := e.addServer("vm3", catalog.Disk{Name: "vda", Source: found[0].Source})
	b1, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	// A clean shutdown stores b1's bitmap in the image; the crashes below
	// leave it marked in use there.
	if err := vm.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	vm = testvm.Start(t, g, testvm.Options{Disk: vm.Disk, Drive: true})
	s = updateSource(t, e, s, "qmp+unix:///vda?socket="+vm.QMP)

	// The VM dies while the backup reads (a full read: more data than the
	// read-ahead holds).
	var once sync.Once
	_, err = e.Backup(ctx, catalog.Job{Project: e.project.ID, ServerID: s.ID, Trigger: catalog.TriggerManual, Full: true}, func(done, total int64) {
		once.Do(vm.Kill)
	})
	if err == nil || !strings.Contains(err.Error(), "the VM stopped or crashed during the backup") {
		t.Fatalf("backup of a VM that died: %v", err)
	}
	var backups []catalog.Backup
	e.Catalog.View(func(tx *catalog.Txn) error {
		backups, err = tx.Backups(e.project.ID, catalog.BackupFilter{})
		return err
	})
	if len(backups) != 1 || backups[0].ID != b1.ID {
		t.Fatalf("after the failed backup the catalog holds %d backups", len(backups))
	}
	e.noSessionFiles()

	e.noSessionFiles()

	// Restarted (from the crash), the VM dies again, right after the
	// point in time was fixed.
	vm = testvm.Start(t, g, testvm.Options{Disk: vm.Disk, Drive: true})
	s = updateSource(t, e, s, "qmp+unix:///vda?socket="+vm.QMP)
	e.SetHooks(&Hooks{AfterPointInTime: vm.Kill})
	if _, err = e.backup(s, false); err == nil || !strings.Contains(err.Error(), "the VM stopped or crashed during the backup") {
		t.Fatalf("backup of a VM that died at the point in time: %v", err)
	}
	e.noSessionFiles()

	// Restarted again, the VM is backed up in full: the parent's bitmap
	// is inconsistent after the crash.
	e.SetHooks(nil)
	vm = testvm.Start(t, g, testvm.Options{Disk: vm.Disk, Drive: true})
	s = updateSource(t, e, s, "qmp+unix:///vda?socket="+vm.QMP)
	b, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	if b.Disks[0].ChangedFrom != "" || !strings.Contains(b.Disks[0].FullRead, "inconsistent") {
		t.Fatalf("after the VM died: changed_from %q full_read %q", b.Disks[0].ChangedFrom, b.Disks[0].FullRead)
	}
	vmClean(t, vm, b.Disks[0].Bitmap)
	// The last backup deleted: full read, said so.
	e.Catalog.Update(func(tx *catalog.Txn) error { return tx.DeleteBackup(b) })
	cur := updateSource(t, e, s, "qmp+unix:///vda?socket="+vm.QMP)
	b2, err := e.backup(cur, false)
	if err != nil {
		t.Fatal(err)
	}
	if b2.Disks[0].ChangedFrom != "" || !strings.Contains(b2.Disks[0].FullRead, "was deleted") {
		t.Fatalf("after deleting the last backup: changed_from %q full_read %q", b2.Disks[0].ChangedFrom, b2.Disks[0].FullRead)
	}
	vmClean(t, vm, b2.Disks[0].Bitmap)
	// --full reads in full and says so.
	b3, err := e.backup(cur, true)
	if err != nil {
		t.Fatal(err)
	}
	if b3.Disks[0].ChangedFrom != "" || !strings.Contains(b3.Disks[0].FullRead, "--full") {
		t.Fatalf("--full: changed_from %q full_read %q", b3.Disks[0].ChangedFrom, b3.Disks[0].FullRead)
	}
	vmClean(t, vm, b3.Disks[0].Bitmap)
	e.noSessionFiles()
}

// TestLiveVMSocketAccess: a QMP or guest agent socket is a disk source
// path under the host access rules: a project token may name only
// sockets below its grants, nobody may name one inside the appliance's
// own data, and a symlink into a grant that points outside is refused.
// Refusals come before anything is dialed.
func TestLiveVMSocketAccess(t *testing.T) {
	e := newTestEngine(t)
	root := t.TempDir()
	granted, outside, own := filepath.Join(root, "granted"), filepath.Join(root, "outside"), filepath.Join(root, "data")
	for _, d := range []string{granted, outside, own} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.Access = &access.Rules{Protected: []string{own}, Projects: map[string]access.Grant{"p1": {SourceDirs: []string{granted}}}}
	listen := func(p string) {
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	listen(filepath.Join(outside, "vm.qmp"))
	listen(filepath.Join(own, "vm.qmp"))
	if err := os.Symlink(filepath.Join(outside, "vm.qmp"), filepath.Join(granted, "link.qmp")); err != nil {
		t.Fatal(err)
	}
	p1 := access.Caller{Project: "p1"}
	ctx := ctxT(t, time.Minute)
	for _, tc := range []struct {
		name   string
		caller access.Caller
		src    string
	}{
		{"project token, socket outside its grant", p1, "qmp+unix:///vda?socket=" + filepath.Join(outside, "vm.qmp")},
		{"project token, symlink in its grant to outside", p1, "qmp+unix:///vda?socket=" + filepath.Join(granted, "link.qmp")},
		{"project token, agent outside its grant", p1, "qmp+unix:///vda?socket=" + filepath.Join(granted, "link.qmp") + "&qga=" + filepath.Join(outside, "qga")},
		{"admin, socket in the appliance's data", admin, "qmp+unix:///vda?socket=" + filepath.Join(own, "vm.qmp")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := e.CheckSource(ctx, tc.caller, tc.src); !errors.Is(err, access.ErrDenied) {
				t.Fatalf("CheckSource: %v, want access denied", err)
			}
		})
	}
	if _, err := e.DiscoverVM(ctx, p1, filepath.Join(outside, "vm.qmp"), ""); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("discover outside the grant: %v", err)
	}
	// The admin may name the socket outside; it is not QEMU (it hangs up),
	// and the error says so.
	if _, _, err := e.CheckSource(ctx, admin, "qmp+unix:///vda?socket="+filepath.Join(outside, "vm.qmp")); !errors.Is(err, catalog.ErrInvalid) || !strings.Contains(err.Error(), "not a QEMU QMP socket") {
		t.Fatalf("admin, silent socket: %v", err)
	}
}
