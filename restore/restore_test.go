package restore_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/blockstore"
	"csbs/internal/testdisk"
	"csbs/internal/testenv"
	"csbs/restore"
	"csbs/source"
)

func openStore(t *testing.T) *blockstore.Store {
	t.Helper()
	s, err := blockstore.Open(filepath.Join(t.TempDir(), "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func backup(t *testing.T, s *blockstore.Store, path string, parent blockstore.MapID) blockstore.MapInfo {
	t.Helper()
	src, err := source.OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	p, err := s.Ingest(context.Background(), src, blockstore.IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), []*blockstore.PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	return p.Info
}

func restoreTo(t *testing.T, s *blockstore.Store, id blockstore.MapID, target string, opt restore.Options) (restore.Result, error) {
	t.Helper()
	v, err := s.OpenVolume(id)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	return restore.ToTarget(context.Background(), v, target, opt)
}

func TestExt4RoundTrip(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Ext4(t, dir, 96, 40, 1)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	target := filepath.Join(dir, "restored.img")
	var calls int
	var last int64
	res, err := restoreTo(t, s, info.ID, target, restore.Options{Verify: true, Progress: func(done, total int64) {
		calls++
		if done < last || total != info.Size {
			t.Errorf("progress went %d -> %d of %d", last, done, total)
		}
		last = done
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || last != info.Size || calls == 0 {
		t.Fatalf("verified=%v progress ended at %d of %d after %d calls", res.Verified, last, info.Size, calls)
	}
	if a, b := testdisk.SHA256(t, img), testdisk.SHA256(t, target); a != b {
		t.Fatalf("restored image differs: %s vs %s", a, b)
	}
	// The restored file is sparse: zero blocks are holes.
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	allocated := st.Blocks * 512
	dataBytes := res.DataBlocks * int64(s.BlockSize())
	if allocated > dataBytes+(1<<20) {
		t.Fatalf("restored file allocates %d bytes for %d bytes of data blocks: not sparse", allocated, dataBytes)
	}
	if res.ZeroBlocks == 0 {
		t.Fatal("an ext4 image with free space has no zero blocks?")
	}
	// And it is a valid file system.
	if out, err := exec.Command("e2fsck", "-fn", target).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of restored image: %v\n%s", err, out)
	}
}

func TestSparseSourceHolesNotRead(t *testing.T) {
	dir := t.TempDir()
	size := int64(512<<20 + 12345) // odd size, mostly hole
	img := testdisk.Sparse(t, dir, size, 100000, 0, 200<<20+7, size-100000)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	if info.Stats.ReadBytes > 1<<20 {
		t.Fatalf("read %d bytes of a sparse image with ~200 KB of data", info.Stats.ReadBytes)
	}
	target := filepath.Join(dir, "out.img")
	if _, err := restoreTo(t, s, info.ID, target, restore.Options{Verify: true}); err != nil {
		t.Fatal(err)
	}
	if a, b := testdisk.SHA256(t, img), testdisk.SHA256(t, target); a != b {
		t.Fatal("sparse image restored wrong")
	}
	fi, _ := os.Stat(target)
	if fi.Size() != size {
		t.Fatalf("restored size %d, want %d", fi.Size(), size)
	}
}

func TestIncrementalStoresOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Ext4(t, dir, 64, 40, 2)
	s := openStore(t)
	first := backup(t, s, img, blockstore.MapID{})
	again := backup(t, s, img, first.ID)
	if again.Stats.NewBytes != 0 {
		t.Fatalf("unchanged image stored %d new bytes", again.Stats.NewBytes)
	}
	changed := testdisk.Modify(t, img, 0.01, 9)
	third := backup(t, s, img, again.ID)
	if third.Stats.NewBlocks > int64(changed) || third.Stats.NewBlocks == 0 {
		t.Fatalf("1%% change (%d blocks) stored %d blocks", changed, third.Stats.NewBlocks)
	}
	if ratio := float64(third.Stats.NewRawBytes) / float64(first.Stats.NewRawBytes); ratio > 0.02 {
		t.Fatalf("1%% change stored %.1f%% of the first backup", 100*ratio)
	}
	target := filepath.Join(dir, "third.img")
	if _, err := restoreTo(t, s, third.ID, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, target) {
		t.Fatal("incremental backup restores wrong")
	}
}

func TestTargetRules(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 4<<20, 70000, 1<<20)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})

	existing := filepath.Join(dir, "existing.img")
	os.WriteFile(existing, []byte("precious data"), 0o644)
	if _, err := restoreTo(t, s, info.ID, existing, restore.Options{}); !errors.Is(err, restore.ErrTargetNotEmpty) {
		t.Fatalf("overwrite without force: %v", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "precious data" {
		t.Fatal("refused restore changed the target")
	}
	if _, err := restoreTo(t, s, info.ID, existing, restore.Options{Force: true}); err != nil {
		t.Fatalf("forced overwrite: %v", err)
	}
	if testdisk.SHA256(t, img) != testdisk.SHA256(t, existing) {
		t.Fatal("forced restore wrong")
	}

	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o644)
	if _, err := restoreTo(t, s, info.ID, empty, restore.Options{}); err != nil {
		t.Fatalf("restore onto an empty file: %v", err)
	}

	link := filepath.Join(dir, "link.img")
	os.Symlink(filepath.Join(dir, "elsewhere.img"), link)
	if _, err := restoreTo(t, s, info.ID, link, restore.Options{Force: true}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("restore onto a symlink: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "elsewhere.img")); !os.IsNotExist(err) {
		t.Fatal("restore followed the symlink")
	}
	if _, err := restoreTo(t, s, info.ID, dir, restore.Options{Force: true}); err == nil {
		t.Fatal("restore onto a directory accepted")
	}
	if _, err := restoreTo(t, s, info.ID, filepath.Join(dir, "no", "such", "dir.img"), restore.Options{}); err == nil {
		t.Fatal("restore into a missing directory accepted")
	}
	assertNoPartials(t, dir)
}

func assertNoPartials(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), "csbs-partial") {
			t.Fatalf("partial file left behind: %s", e.Name())
		}
	}
}

func TestCorruptBlockFailsRestoreCleanly(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 8<<20, 3<<20, 1<<20)
	storeDir := filepath.Join(t.TempDir(), "store")
	s, err := blockstore.Open(storeDir, blockstore.Options{Codec: blockstore.CodecRaw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	info := backup(t, s, img, blockstore.MapID{})
	// Damage the stored copy of block 20 on disk.
	v, err := s.OpenVolume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.Block(context.Background(), 20)
	if err != nil || blockstore.IsZeroBlock(b) {
		t.Fatalf("block 20: %v", err)
	}
	needle := bytes.Clone(b[1000:1100])
	s.Close()
	testdisk.CorruptStored(t, storeDir, needle)
	if s, err = blockstore.Open(storeDir, blockstore.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	target := filepath.Join(dir, "out.img")
	_, err = restoreTo(t, s, info.ID, target, restore.Options{})
	if !blockstore.IsDataError(err) {
		t.Fatalf("restore with a corrupt block: %v", err)
	}
	if _, serr := os.Stat(target); !os.IsNotExist(serr) {
		t.Fatal("failed restore left the target behind")
	}
	assertNoPartials(t, dir)
}

// TestTargetDiskFull restores onto a 4 MiB tmpfs: ENOSPC must fail the
// restore with a clear error and leave nothing behind.
func TestTargetDiskFull(t *testing.T) {
	testenv.NeedRoot(t, "to mount a small tmpfs")
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 16<<20, 12<<20, 0)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	small := filepath.Join(dir, "small")
	os.Mkdir(small, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", small).Run()
	_, err := restoreTo(t, s, info.ID, filepath.Join(small, "out.img"), restore.Options{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "out.img") {
		t.Fatalf("restore onto a full disk: %v", err)
	}
	entries, _ := os.ReadDir(small)
	if len(entries) != 0 {
		t.Fatalf("full disk restore left %d files", len(entries))
	}
}

// within fails the test if f blocks (a FIFO opened for writing waits
// for a reader forever unless opened non-blocking).
func within[T any](t *testing.T, what string, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s blocked", what)
		var zero T
		return zero, nil
	}
}

// TestTargetTypes: only a new file, a regular file or a block device is
// a target, for a normal restore (ToTarget) and an instant one
// (OpenInPlace) alike; the refusal comes at open, without blocking, and
// leaves nothing behind. Inspect, which restore start uses, agrees.
func TestTargetTypes(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 1<<20, 5000, 0)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	for _, tc := range []struct{ path, want string }{
		{fifo, "FIFO"},
		{"/dev/null", "character device"},
		{filepath.Join(dir, "s.sock"), "socket"},
		{sub, "directory"},
	} {
		if err := restore.Inspect(tc.path, nil); !errors.Is(err, restore.ErrNotATarget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Inspect %s: %v", tc.path, err)
		}
		_, err := within(t, "restore to "+tc.path, func() (restore.Result, error) {
			return restoreTo(t, s, info.ID, tc.path, restore.Options{Force: true})
		})
		if !errors.Is(err, restore.ErrNotATarget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("restore to %s: %v, want a refusal naming %q", tc.path, err, tc.want)
		}
		f, err := within(t, "instant restore to "+tc.path, func() (*os.File, error) {
			f, _, err := restore.OpenInPlace(tc.path, info.Size, true, true, nil)
			return f, err
		})
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, restore.ErrNotATarget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("instant restore to %s: %v, want a refusal naming %q", tc.path, err, tc.want)
		}
	}
	assertNoPartials(t, dir)
}

// TestTargetCheckSeesRealPath: Check judges the target's real location
// (its directory resolved by the kernel), so a directory that is a
// symlink into a forbidden place is refused, and nothing is written
// there.
func TestTargetCheckSeesRealPath(t *testing.T) {
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 1<<20, 5000, 0)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	forbidden := filepath.Join(dir, "forbidden")
	os.Mkdir(forbidden, 0o700)
	os.WriteFile(filepath.Join(forbidden, "precious"), []byte("keep"), 0o600)
	if err := os.Symlink(forbidden, filepath.Join(dir, "innocent")); err != nil {
		t.Fatal(err)
	}
	var seen []string
	check := func(real string) error {
		seen = append(seen, real)
		if strings.HasPrefix(real, forbidden+"/") {
			return errors.New("refused: " + real)
		}
		return nil
	}
	for _, name := range []string{"precious", "new.img"} {
		target := filepath.Join(dir, "innocent", name)
		if _, err := restoreTo(t, s, info.ID, target, restore.Options{Force: true, Check: check}); err == nil || !strings.Contains(err.Error(), "refused: "+filepath.Join(forbidden, name)) {
			t.Fatalf("restore through a symlinked dir: %v", err)
		}
		if _, _, err := restore.OpenInPlace(target, info.Size, true, true, check); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("instant restore through a symlinked dir: %v", err)
		}
		if err := restore.Inspect(target, check); err == nil {
			t.Fatal("Inspect accepted it")
		}
	}
	if b, _ := os.ReadFile(filepath.Join(forbidden, "precious")); string(b) != "keep" {
		t.Fatal("a refused restore wrote the file")
	}
	if es, _ := os.ReadDir(forbidden); len(es) != 1 {
		t.Fatalf("a refused restore left %d files", len(es))
	}
	if seen[0] != filepath.Join(forbidden, "precious") {
		t.Fatalf("check saw %q", seen)
	}
	// Allowed: the restore lands where the check saw it.
	ok := filepath.Join(dir, "ok.img")
	if _, err := restoreTo(t, s, info.ID, ok, restore.Options{Check: check}); err != nil {
		t.Fatal(err)
	}
	if testdisk.SHA256(t, ok) != testdisk.SHA256(t, img) {
		t.Fatal("restore differs")
	}
}

// TestDeviceTargetInUse: a block device that is mounted (as the store's
// own file system would be) is refused, since it is opened exclusively;
// the same device unmounted is restored.
func TestDeviceTargetInUse(t *testing.T) {
	testenv.NeedRoot(t, "a loop device and a mount")
	dir := t.TempDir()
	img := testdisk.Sparse(t, dir, 4<<20, 5000, 0)
	s := openStore(t)
	info := backup(t, s, img, blockstore.MapID{})
	backing := testdisk.Ext4(t, dir, 8, 1, 3)
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "ro", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	_, err = restoreTo(t, s, info.ID, dev, restore.Options{Force: true})
	exec.Command("umount", mnt).Run()
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("restore onto a mounted device: %v", err)
	}
	if _, err := restoreTo(t, s, info.ID, dev, restore.Options{Force: true}); err != nil {
		t.Fatalf("restore onto the unmounted device: %v", err)
	}
}

// TestInspectWrite: what a restore would refuse when it opens its target
// is refused by InspectWrite, which writes nothing, so that restore start
// can say it at once.
func TestInspectWrite(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full.img")
	os.WriteFile(full, []byte("keep me"), 0o600)
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o600)
	for _, tc := range []struct {
		name  string
		path  string
		force bool
		want  error
	}{
		{"new file", filepath.Join(dir, "new.img"), false, nil},
		{"empty file", empty, false, nil},
		{"file with data", full, false, restore.ErrTargetNotEmpty},
		{"file with data, forced", full, true, nil},
		{"character device", "/dev/null", true, restore.ErrNotATarget},
		{"directory", dir, true, restore.ErrNotATarget},
	} {
		err := restore.InspectWrite(tc.path, 1<<20, tc.force, nil)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(full); string(b) != "keep me" {
		t.Fatal("InspectWrite changed a target")
	}
	if _, err := os.Stat(filepath.Join(dir, "new.img")); !os.IsNotExist(err) {
		t.Fatal("InspectWrite created a target")
	}
}
