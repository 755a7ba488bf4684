// Package testvm boots real QEMU guests for tests of live-VM backups: a
// Debian kernel unpacked from its package (apt-get download), a
// busybox-static initramfs with the kernel modules the guest needs,
// qemu-guest-agent (copied with its libraries from the host's package)
// and guestwriter, a program that keeps appending checksummed records to
// an ext4 data disk and fsyncing. Guests run under TCG (no KVM here) and
// boot in seconds.
//
// The kernel and initramfs are built once and cached under
// $CSBS_TESTVM_CACHE (default: <tmp>/csbs-testvm-cache), keyed by the
// versions of the packages and the writer's source; a file lock makes
// parallel test processes share one build.
package testvm

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// Guest is a bootable guest: a kernel and an initramfs.
type Guest struct {
	Kernel, Initrd string
	// Key names the package versions the guest was built from.
	Key string
}

// Missing returns the required host commands that are not installed, and
// the Debian packages that bring them.
func Missing() []string {
	var out []string
	for _, c := range []string{"qemu-system-x86_64", "qemu-img", "apt-get", "dpkg-deb", "ldd", "mkfs.ext4", "debugfs", "e2fsck", "go"} {
		if _, err := exec.LookPath(c); err != nil {
			out = append(out, c)
		}
	}
	for _, f := range []string{"/bin/busybox", "/usr/sbin/qemu-ga"} {
		if _, err := os.Stat(f); err != nil {
			out = append(out, f)
		}
	}
	return out
}

// Need skips the test when the host lacks what a guest needs, and fails
// it instead when env CI is set (CI installs everything: .ci/run).
func Need(t testing.TB) {
	t.Helper()
	if m := Missing(); len(m) > 0 {
		msg := fmt.Sprintf("live-VM test needs %s (apt-get install qemu-system-x86 qemu-utils busybox-static qemu-guest-agent e2fsprogs)", strings.Join(m, ", "))
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// guestModules are the kernel modules the guest loads (their
// dependencies are found from each module's .modinfo).
func guestModules() []string {
	return []string{"crc32c_generic", "virtio_pci", "virtio_blk", "virtio_console", "ext4"}
}

const builderVersion = "4"

// Build returns the cached guest, building it first if needed.
func Build(t testing.TB) Guest {
	t.Helper()
	Need(t)
	g, err := build()
	if err != nil {
		t.Fatalf("build test guest: %v", err)
	}
	return g
}

func cacheRoot() string {
	if d := os.Getenv("CSBS_TESTVM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "csbs-testvm-cache")
}

func build() (Guest, error) {
	kpkg, kver, err := kernelPackage()
	if err != nil {
		return Guest{}, err
	}
	bbver, err := output("dpkg-query", "-W", "-f", "${Version}", "busybox-static")
	if err != nil {
		return Guest{}, fmt.Errorf("busybox-static: %w", err)
	}
	gaver, err := output("dpkg-query", "-W", "-f", "${Version}", "qemu-guest-agent")
	if err != nil {
		return Guest{}, fmt.Errorf("qemu-guest-agent: %w", err)
	}
	wsum, err := writerSourceSum()
	if err != nil {
		return Guest{}, err
	}
	key := fmt.Sprintf("%s_%s-bb%s-ga%s-w%s-b%s", kpkg, kver, bbver, gaver, wsum[:12], builderVersion)
	key = strings.NewReplacer(":", "_", "+", "_", "~", "_", "/", "_").Replace(key)
	root := cacheRoot()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Guest{}, err
	}
	dir := filepath.Join(root, key)
	g := Guest{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.gz"), Key: key}

	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Guest{}, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Guest{}, fmt.Errorf("lock guest cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return g, nil
	}
	tmp, err := os.MkdirTemp(root, "build-")
	if err != nil {
		return Guest{}, err
	}
	defer os.RemoveAll(tmp)
	if err := buildInto(tmp, kpkg); err != nil {
		return Guest{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), []byte(key+"\n"), 0o644); err != nil {
		return Guest{}, err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return Guest{}, err
	}
	return g, nil
}

func output(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// kernelPackage finds the versioned package behind linux-image-amd64.
func kernelPackage() (pkg, version string, err error) {
	deps, err := output("apt-cache", "depends", "linux-image-amd64")
	if err != nil {
		return "", "", fmt.Errorf("%w (run apt-get update first)", err)
	}
	for _, l := range strings.Split(deps, "\n") {
		l = strings.TrimSpace(l)
		if p, ok := strings.CutPrefix(l, "Depends: linux-image-"); ok && strings.HasSuffix(p, "-amd64") {
			pkg = "linux-image-" + p
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("apt-cache depends linux-image-amd64 names no kernel package:\n%s", deps)
	}
	show, err := output("apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(show, "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			return pkg, v, nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no version", pkg)
}

func writerDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "guestwriter")
}

func writerSourceSum() (string, error) {
	h := sha256.New()
	ents, err := os.ReadDir(writerDir())
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(writerDir(), e.Name()))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin /data /run /var/run /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /lib/modules/$m.ko || echo "csbs-guest: insmod $m failed"; done
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}";; esac; done; }
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
if ! mount -t ext4 /dev/vda /data; then echo "csbs-guest: mount /dev/vda failed"; poweroff -f; fi
if [ "$(arg csbs.agent)" != 0 ]; then
  for p in /sys/class/virtio-ports/*; do
    if [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
      /usr/sbin/qemu-ga -m virtio-serial -p /dev/${p##*/} -t /run &
      echo "csbs-guest: agent on ${p##*/}"
    fi
  done
fi
if [ -b /dev/vdb ]; then
  (n=$(( $(cat /sys/block/vdb/size) / 128 )); i=0
   while true; do dd if=/dev/urandom of=/dev/vdb bs=64k count=1 seek=$(( (i * 7919) % n )) conv=fsync 2>/dev/null; i=$((i+1)); sleep 0.2; done) &
fi
echo "csbs-guest: ready"
/guestwriter -rate "$(arg csbs.rate)" -overwrite-every "$(arg csbs.every)" -blob-mib "$(arg csbs.blob)" 2>&1
echo "csbs-guest: writer ended"
sync
exec sleep 100000
`

func buildInto(dir, kpkg string) error {
	dl := filepath.Join(dir, "dl")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("apt-get", "download", kpkg)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w\n%s", kpkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", kpkg, len(debs))
	}
	x := filepath.Join(dir, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x: %w\n%s", err, out)
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(x, "lib", "modules", "*"))
	if len(vmlinuz) != 1 || len(mods) != 1 {
		return fmt.Errorf("%s: want one vmlinuz and one module tree, found %d and %d", kpkg, len(vmlinuz), len(mods))
	}
	if err := os.Rename(vmlinuz[0], filepath.Join(dir, "vmlinuz")); err != nil {
		return err
	}

	cp := newCpio()
	cp.file("init", []byte(initScript), 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	cp.file("bin/busybox", bb, 0o755)

	order, err := moduleOrder(mods[0], guestModules())
	if err != nil {
		return err
	}
	var list []string
	for _, m := range order {
		b, err := os.ReadFile(m.path)
		if err != nil {
			return err
		}
		cp.file("lib/modules/"+m.name+".ko", b, 0o644)
		list = append(list, m.name)
	}
	cp.file("modules.list", []byte(strings.Join(list, "\n")+"\n"), 0o644)

	// qemu-ga and its shared libraries, at the paths ldd names.
	files := []string{"/usr/sbin/qemu-ga"}
	libs, err := output("ldd", "/usr/sbin/qemu-ga")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(libs, "\n") {
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "/") {
				files = append(files, f)
			}
		}
	}
	for _, f := range files {
		real, err := filepath.EvalSymlinks(f)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(real)
		if err != nil {
			return err
		}
		cp.file(strings.TrimPrefix(f, "/"), b, 0o755)
	}

	wbin := filepath.Join(dir, "guestwriter")
	gb := exec.Command("go", "build", "-trimpath", "-o", wbin, ".")
	gb.Dir = writerDir()
	gb.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := gb.CombinedOutput(); err != nil {
		return fmt.Errorf("build guestwriter: %w\n%s", err, out)
	}
	wb, err := os.ReadFile(wbin)
	if err != nil {
		return err
	}
	cp.file("guestwriter", wb, 0o755)

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(cp.finish()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "initrd.gz"), gz.Bytes(), 0o644); err != nil {
		return err
	}
	os.RemoveAll(x)
	os.RemoveAll(dl)
	os.Remove(wbin)
	return nil
}

type module struct{ name, path string }

// moduleOrder returns the modules and their dependencies, dependencies
// first, read from each .ko's .modinfo section (the package ships no
// modules.dep: depmod makes it on install).
func moduleOrder(tree string, want []string) ([]module, error) {
	paths := map[string]string{}
	err := filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			paths[strings.ReplaceAll(name, "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []module
	seen := map[string]bool{}
	var visit func(string) error
	visit = func(name string) error {
		name = strings.ReplaceAll(name, "-", "_")
		if seen[name] {
			return nil
		}
		seen[name] = true
		p, ok := paths[name]
		if !ok {
			return nil // built into the kernel
		}
		deps, err := modDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		out = append(out, module{name, p})
		return nil
	}
	for _, w := range want {
		if err := visit(w); err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(out, func(m module) bool { return m.name == w }) {
			if _, ok := paths[w]; ok {
				return nil, fmt.Errorf("module %s not ordered", w)
			}
		}
	}
	return out, nil
}

func modDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, nil
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok && v != "" {
			return strings.Split(v, ","), nil
		}
	}
	return nil, nil
}

// cpio writes a newc archive (the initramfs format) with the parent
// directories of every file.
type cpio struct {
	buf  bytes.Buffer
	dirs map[string]bool
	ino  int
}

func newCpio() *cpio { return &cpio{dirs: map[string]bool{}} }

func (c *cpio) entry(name string, mode uint32, data []byte) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpio) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpio) dir(name string) {
	if name == "." || name == "" || c.dirs[name] {
		return
	}
	c.dir(filepath.Dir(name))
	c.dirs[name] = true
	c.entry(name, 0o040755, nil)
}

func (c *cpio) file(name string, data []byte, perm uint32) {
	c.dir(filepath.Dir(name))
	c.entry(name, 0o100000|perm, data)
}

func (c *cpio) finish() []byte {
	c.entry("TRAILER!!!", 0, nil)
	return c.buf.Bytes()
}
