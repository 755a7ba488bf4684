package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

// freeBytes is what statfs says is available under path.
func freeBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fillTo appends to the file at path until at most leave bytes stay free
// on its file system (leave 0: until the file system is full).
func fillTo(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := []byte(strings.Repeat("filler!\n", 128<<10)) // 1 MiB
	for {
		free := freeBytes(t, filepath.Dir(path))
		if free <= leave {
			return
		}
		n := min(int64(len(buf)), free-leave)
		if _, err := f.Write(buf[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) && leave == 0 {
				return
			}
			t.Fatal(err)
		}
	}
}

// smallFS mounts a tmpfs of sizeMiB for the test and removes it after the
// daemon stopped.
func smallFS(t *testing.T, sizeMiB int) string {
	testenv.NeedFUSE(t) // root, for the mount
	dir := filepath.Join(t.TempDir(), "small")
	os.Mkdir(dir, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMiB), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	// Registered before the appliance, so it runs after the daemon stopped.
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestCatalogWritesOnFullDisk fills the daemon's file system with another
// file. Below store.min_free every write that adds something is refused
// with ENOSPC (naming free space, reserve and what to do) while deleting,
// revoking, restoring and GC still work; with the disk entirely full
// every write is refused. The daemon never crashes (Badger's mapped files
// make a write on a full file system SIGBUS), reads keep working, it
// stops cleanly, refuses to start with the reason, and once the filler is
// gone it starts and writes work again.
func TestCatalogWritesOnFullDisk(t *testing.T) {
	t.Parallel()
	small := smallFS(t, 640)
	a := startAppliance(t, "data_dir = \""+small+"/data\"\n[store]\nmin_free = \"320MiB\"\n")
	img := testdisk.Sparse(t, a.dir, 4<<20, 20, 0)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var b backupInfo
	a.okJSON(&b, "backup", "create", "web1", "--wait")
	var tok struct {
		ID string `json:"id"`
	}
	a.okJSON(&tok, "token", "create", "--name", "ci")

	filler := filepath.Join(small, "filler")
	growRefused := func(phase string) {
		t.Helper()
		for i := range 20 {
			for _, args := range [][]string{
				{"project", "create", fmt.Sprintf("p%d", i)},
				{"token", "create", "--name", fmt.Sprintf("t%d", i)},
				{"server", "add", "--name", fmt.Sprintf("s%d", i), "--disk", "vda=" + img},
				{"policy", "create", "--name", fmt.Sprintf("pol%d", i), "--time", "02:00", "--every-days", "1"},
				{"backup", "create", "web1", "--wait"},
			} {
				_, errOut, code := a.run(nil, args...)
				if code == 0 || !strings.Contains(errOut, "no space left on device") || !strings.Contains(errOut, "MiB free") {
					t.Fatalf("%s: csbs %s: exit %d, want a clear ENOSPC error: %s\ndaemon log:\n%s", phase, strings.Join(args, " "), code, errOut, a.logs)
				}
			}
		}
	}
	readsWork := func() {
		t.Helper()
		a.ok("status")
		a.ok("server", "ls")
		a.ok("backup", "show", b.ID)
		a.ok("job", "ls")
		a.ok("token", "ls")
	}

	// Below the reserve, above half of it.
	fillTo(t, filler, 240<<20)
	growRefused("below min_free")
	readsWork()
	if !strings.Contains(a.ok("backup", "show", b.ID), "available") {
		t.Fatal("backup lost")
	}
	out := a.ok("job", "ls")
	if !strings.Contains(out, "skipped") {
		t.Fatalf("a backup refused for space left no trace in job ls:\n%s", out)
	}
	target := filepath.Join(a.dir, "restored.img")
	a.ok("restore", "start", b.ID, "--disk", "vda="+target, "--wait")
	if testdisk.SHA256(t, target) != testdisk.SHA256(t, img) {
		t.Fatal("restore on a full disk differs")
	}
	a.ok("token", "revoke", tok.ID)
	a.ok("gc")

	// Entirely full: everything that writes is refused, nothing crashes.
	fillTo(t, filler, 0)
	for i := range 200 {
		_, errOut, code := a.run(nil, "project", "create", fmt.Sprintf("full%d", i))
		if code == 0 || !strings.Contains(errOut, "no space left on device") {
			t.Fatalf("project create %d on a full disk: exit %d %s\ndaemon log:\n%s", i, code, errOut, a.logs)
		}
	}
	a.fails(nil, "no space left on device", "backup", "rm", b.ID)
	a.fails(nil, "no space left on device", "restore", "start", b.ID, "--disk", "vda="+filepath.Join(a.dir, "r2.img"))
	readsWork()
	// Stopping on the full disk is clean; starting is refused with the
	// reason (Badger would replay its log into new files and crash).
	a.stop()
	cmd := exec.Command(binary, "serve")
	cmd.Env = append(os.Environ(), a.env...)
	served, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(served), "no space left on device") || !strings.Contains(string(served), "to open its store") {
		t.Fatalf("serve on a full disk: %v\n%s", err, served)
	}

	// Space back: writes work again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a.start()
	readsWork()
	a.ok("project", "create", "after")
	a.ok("token", "create", "--name", "after")
	a.ok("server", "add", "--name", "web2", "--disk", "vda="+img)
	a.ok("policy", "create", "--name", "after", "--time", "02:00", "--every-days", "1")
	a.ok("backup", "create", "web2", "--wait")
	a.ok("backup", "rm", b.ID)
}

// A name of the id form would win over nothing in lookups but shadow the
// id it copies: "backup rm bk-…" would delete the other backup. Every
// named object refuses such names, and the backup it imitates stays.
func TestIDLikeNamesRefused(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 1<<20, 4, 0)
	var srv idName
	a.okJSON(&srv, "server", "add", "--name", "web1", "--disk", "vda="+img)
	var victim idName
	a.okJSON(&victim, "backup", "create", "web1", "--wait")
	var pol idName
	a.okJSON(&pol, "policy", "create", "--name", "daily", "--time", "02:00", "--every-days", "1")
	for _, args := range [][]string{
		{"backup", "create", "web1", "--name", victim.ID, "--wait"},
		{"backup", "create", "web1", "--name", strings.ToUpper(victim.ID), "--wait"},
		{"server", "add", "--name", srv.ID, "--disk", "vda=" + img},
		{"server", "add", "--name", victim.ID, "--disk", "vda=" + img},
		{"policy", "create", "--name", pol.ID, "--time", "02:00", "--every-days", "1"},
		{"policy", "update", "daily", "--name", victim.ID},
		{"project", "create", "prj-0123456789ab"},
		{"token", "create", "--name", "tok-0123456789ab"},
	} {
		a.fails(nil, "looks like an object id", args...)
	}
	var bs []idName
	a.okJSON(&bs, "backup", "ls")
	if len(bs) != 1 || bs[0].ID != victim.ID {
		t.Fatalf("backups after refused names: %+v", bs)
	}
}

// backup show of a backup that scrub marked damaged says so, in both
// forms, with what to do.
func TestBackupShowDamage(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 1<<20, 4, 0)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var good, bad backupInfo
	a.okJSON(&bad, "backup", "create", "web1", "--wait")
	a.okJSON(&good, "backup", "create", "web1", "--wait")
	// The scrub's verdict, written as scrub writes it (reproducing real
	// block damage depends on the store's file layout, which is not what
	// is tested here).
	a.stop()
	markDamaged(t, filepath.Join(a.dir, "data", "store"), bad.ID)
	a.start()

	out := a.ok("backup", "show", bad.ID)
	for _, want := range []string{"status:    available, DAMAGED", "damage:    scrub found blocks of this backup damaged", "csbs backup create web1 --wait", "csbs backup rm " + bad.ID} {
		if !strings.Contains(out, want) {
			t.Fatalf("backup show of a damaged backup lacks %q:\n%s", want, out)
		}
	}
	var v struct {
		Damaged *bool  `json:"damaged"`
		Damage  string `json:"damage"`
	}
	a.okJSON(&v, "backup", "show", bad.ID)
	if v.Damaged == nil || !*v.Damaged || !strings.Contains(v.Damage, "csbs backup rm "+bad.ID) {
		t.Fatalf("backup show --json of a damaged backup: %+v", v)
	}
	if out := a.ok("backup", "show", good.ID); strings.Contains(out, "DAMAGED") || strings.Contains(out, "damage:") {
		t.Fatalf("an intact backup shows damage:\n%s", out)
	}
	var g struct {
		Damaged *bool  `json:"damaged"`
		Damage  string `json:"damage"`
	}
	a.okJSON(&g, "backup", "show", good.ID)
	if g.Damaged == nil || *g.Damaged || g.Damage != "" {
		t.Fatalf("backup show --json of an intact backup: damaged %v %q", g.Damaged, g.Damage)
	}
}

// markDamaged sets a backup's damage mark in a stopped daemon's store.
func markDamaged(t *testing.T, storeDir, id string) {
	t.Helper()
	s, err := blockstore.Open(storeDir, blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = catalog.New(s.KV(), catalog.Options{}).Update(func(tx *catalog.Txn) error {
		bs, err := tx.AllBackups()
		if err != nil {
			return err
		}
		for _, b := range bs {
			if b.ID == id {
				b.Damaged = true
				return tx.PutBackup(b)
			}
		}
		return fmt.Errorf("backup %s not found", id)
	})
	if err != nil {
		t.Fatal(err)
	}
}
