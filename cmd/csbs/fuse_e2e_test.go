package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/mounts")
	return strings.Contains(string(b), " "+path+" ")
}

// waitFor polls cond (the kernel caches entries for a second).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestFUSEMountAndBrowse(t *testing.T) {
	t.Parallel()
	testenv.NeedFUSE(t)
	a := startAppliance(t, "[access.projects.p2]\nmount_dirs = [\"{dir}/other\"]\n")
	img := testdisk.Ext4(t, a.dir, 48, 16, 31)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	a.ok("backup", "create", "web1", "--name", "common1", "--wait")
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")

	mnt := filepath.Join(a.dir, "mnt")
	a.ok("mount", mnt)
	defer a.run(nil, "umount", mnt)
	imgPath := filepath.Join(mnt, "default", "web1", "golden", "vda.img")
	fi, err := os.Stat(imgPath)
	src, _ := os.Stat(img)
	if err != nil || fi.Size() != src.Size() || fi.Mode().Perm() != 0o444 {
		t.Fatalf("image in the tree: %v %+v", err, fi)
	}
	if _, err := os.Stat(filepath.Join(mnt, "default", "web1", "common1")); !os.IsNotExist(err) {
		t.Fatalf("a Common backup appears in the tree: %v", err)
	}
	if testdisk.SHA256(t, imgPath) != testdisk.SHA256(t, img) {
		t.Fatal("sha256 of the mounted image differs from the source")
	}
	if err := os.WriteFile(imgPath, []byte("x"), 0o644); err == nil {
		t.Fatal("the mount accepted a write")
	}

	// Concurrent readers at random offsets.
	want, _ := os.ReadFile(img)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(imgPath)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			r := rand.New(rand.NewPCG(uint64(g), 4))
			buf := make([]byte, 300000)
			for range 50 {
				n := 1 + r.IntN(len(buf))
				off := r.Int64N(int64(len(want) - n))
				if _, err := f.ReadAt(buf[:n], off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- errors.New("wrong bytes from a concurrent read")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// File-level restore: the disk loop-mounted read-only, a file compared.
	files := filepath.Join(a.dir, "files")
	a.ok("backup", "browse", "golden", "--disk", "vda", files)
	lic, err := os.ReadFile("/usr/share/common-licenses/GPL-3")
	if err == nil {
		got, err := os.ReadFile(filepath.Join(files, "licenses", "GPL-3"))
		if err != nil || !bytes.Equal(got, lic) {
			t.Fatalf("file in the browsed backup: %v", err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(files, "var", "log"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("browse: %v %d entries", err, len(entries))
	}
	a.fails(nil, "in use", "backup", "rm", "golden")
	a.ok("backup", "unbrowse", files)
	if isMounted(files) {
		t.Fatal("still mounted after unbrowse")
	}
	a.fails(nil, "not a browse mount", "backup", "unbrowse", files)

	// New backups appear and deleted ones disappear without remounting.
	a.ok("backup", "create", "web1", "--name", "second", "--wait")
	waitFor(t, "new backup in the tree", func() bool {
		_, err := os.Stat(filepath.Join(mnt, "default", "web1", "second", "vda.img"))
		return err == nil
	})
	a.ok("backup", "rm", "second")
	waitFor(t, "deleted backup gone from the tree", func() bool {
		_, err := os.Stat(filepath.Join(mnt, "default", "web1", "second"))
		return os.IsNotExist(err)
	})

	// Another project's mount shows nothing of this one.
	a.ok("project", "create", "p2")
	var tok struct {
		Secret string `json:"secret"`
	}
	a.okJSON(&tok, "--project", "p2", "token", "create")
	other := filepath.Join(a.dir, "other")
	if out, errOut, code := a.run([]string{"CSBS_TOKEN=" + tok.Secret}, "mount", other); code != 0 {
		t.Fatalf("p2 mount: %s %s", out, errOut)
	}
	des, _ := os.ReadDir(other)
	for _, e := range des {
		if e.Name() != "p2" {
			t.Fatalf("p2's mount shows %s", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(other, "default")); !os.IsNotExist(err) {
		t.Fatal("p2's mount shows the default project")
	}
	if _, _, code := a.run([]string{"CSBS_TOKEN=" + tok.Secret}, "umount", mnt); code == 0 {
		t.Fatal("p2 unmounted the default project's mount")
	}

	// SIGTERM unmounts cleanly; a restart mounts again.
	a.stop()
	if isMounted(mnt) || isMounted(other) {
		t.Fatal("mounts left after SIGTERM")
	}
	a.start()
	waitFor(t, "mount back after restart", func() bool { return isMounted(mnt) })
	if testdisk.SHA256(t, imgPath) != testdisk.SHA256(t, img) {
		t.Fatal("image differs after restart")
	}
	a.ok("umount", mnt)
	if out, errOut, code := a.run([]string{"CSBS_TOKEN=" + tok.Secret}, "umount", other); code != 0 {
		t.Fatalf("p2 umount: %s %s", out, errOut)
	}
}

// TestFUSECorruptBlockIsEIO flips a byte of a stored block on disk: the
// mounted image answers EIO for it, never other bytes.
func TestFUSECorruptBlockIsEIO(t *testing.T) {
	t.Parallel()
	testenv.NeedFUSE(t)
	a := startAppliance(t, "[store]\ncompression = \"none\"\n")
	// A disk with one recognisable random block at 1 MiB.
	disk := filepath.Join(a.dir, "disk.img")
	data := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(8, 8))
	for i := 1 << 20; i < 1<<20+65536; i++ {
		data[i] = byte(r.Uint32())
	}
	os.WriteFile(disk, data, 0o600)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+disk)
	a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	a.stop()
	testdisk.CorruptStored(t, filepath.Join(a.dir, "data", "store"), data[1<<20+1000:1<<20+1100])
	a.start()
	mnt := filepath.Join(a.dir, "mnt")
	a.ok("mount", mnt)
	defer a.run(nil, "umount", mnt)
	f, err := os.Open(filepath.Join(mnt, "default", "web1", "golden", "vda.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	_, err = f.ReadAt(buf, 1<<20+4096)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the corrupt block: %v", err)
	}
	if bytes.Equal(buf, data[1<<20+4096:1<<20+8192]) {
		t.Fatal("corrupt read returned data")
	}
}
