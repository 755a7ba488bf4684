// Package powerloss gives tests a real file system that can lose power.
//
// New makes an ext4 file system on a loop device whose backing file is
// served by a FUSE helper process (the test binary run again, see Main).
// The helper is a disk with a volatile write cache: a write is kept in
// memory until a flush (fsync of the backing file, which the loop driver
// sends for every flush or FUA the file system issues) makes it durable.
// Cut freezes the durable state at that instant and returns it as an
// image: what the disk would hold after a power loss there. Recover
// mounts such an image (the journal replays as after a reboot) so that a
// test can check what survived.
//
// So a test of durability asks one question of real code on a real file
// system: is what was acknowledged before the cut still there after it?
// The mount uses commit=600 so that ext4's five-second journal timer
// cannot make an unsynced change durable by luck during a test.
//
// It needs root, /dev/fuse, losetup and mkfs.ext4; Need skips (or fails
// under CI) without them.
package powerloss

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const envServe = "CSBS_POWERLOSS_SERVE"

// Main must be called first thing in TestMain of a package that uses New:
// in the helper process it serves the FUSE disk and exits.
func Main() {
	spec := os.Getenv(envServe)
	if spec == "" {
		return
	}
	if err := serve(spec); err != nil {
		fmt.Fprintln(os.Stderr, "powerloss helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Need skips the test without what New needs, or fails it under CI.
func Need(t testing.TB) {
	t.Helper()
	skip := func(format string, a ...any) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("power-loss tests need this in CI: "+format, a...)
		}
		t.Skipf("skipping power-loss test: "+format, a...)
	}
	if os.Geteuid() != 0 {
		skip("loop devices and mounts need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skip("no /dev/fuse: %v", err)
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip("%s not installed", tool)
		}
	}
}

// Disk is a mounted ext4 file system that can lose power.
type Disk struct {
	// Dir is where the file system is mounted.
	Dir string

	t       testing.TB
	durable string // the helper's durable file
	ctl     string
	work    string
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// New makes and mounts a file system of sizeMiB on a disk that can lose
// power. Everything is undone in t.Cleanup.
func New(t testing.TB, sizeMiB int) *Disk {
	t.Helper()
	Need(t)
	work := t.TempDir()
	d := &Disk{t: t, work: work, durable: filepath.Join(work, "durable.img")}
	size := int64(sizeMiB) << 20
	f, err := os.Create(d.durable)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	fuseDir := filepath.Join(work, "fuse")
	d.Dir = filepath.Join(work, "mnt")
	os.Mkdir(fuseDir, 0o700)
	os.Mkdir(d.Dir, 0o700)
	d.ctl = filepath.Join(fuseDir, "ctl")

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", envServe, fuseDir, d.durable, size))
	stdin, err := helper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		helper.Wait()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("powerloss helper did not start (does TestMain call powerloss.Main?): %q", line)
	}
	loop := run(t, "losetup", "--find", "--show", filepath.Join(fuseDir, "disk.img"))
	t.Cleanup(func() { exec.Command("losetup", "--detach", loop).Run() })
	run(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop)
	run(t, "mount", "-t", "ext4", "-o", "commit=600", loop, d.Dir)
	t.Cleanup(func() { exec.Command("umount", d.Dir).Run() })
	return d
}

// Cut loses power now: it returns an image file holding what the disk
// would keep, that is everything flushed before this call and nothing
// after. The mounted file system keeps working (on the volatile cache)
// so that the test can close what it has open.
func (d *Disk) Cut() string {
	d.t.Helper()
	if err := os.WriteFile(d.ctl, []byte("cut"), 0); err != nil {
		d.t.Fatalf("cut the power: %v", err)
	}
	img := filepath.Join(d.t.TempDir(), "after-power-loss.img")
	run(d.t, "cp", "--sparse=always", d.durable, img)
	return img
}

// Recover mounts an image that Cut returned, replaying the journal as a
// reboot would, and returns the mount point (unmounted in t.Cleanup).
func Recover(t testing.TB, img string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "recovered")
	os.Mkdir(dir, 0o700)
	loop := run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "--detach", loop).Run() })
	run(t, "mount", "-t", "ext4", loop, dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}
