package source

import (
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

	"csbs/internal/testenv"
)

// openWithin opens spec and fails the test if the open blocks: a FIFO
// opened for reading waits for a writer forever unless opened
// non-blocking.
func openWithin(t *testing.T, spec string, guard Guard) (Disk, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		d   Disk
		err error
	}
	ch := make(chan result, 1)
	go func() {
		d, err := Open(ctx, spec, guard)
		ch <- result{d, err}
	}()
	select {
	case r := <-ch:
		return r.d, r.err
	case <-ctx.Done():
		t.Fatalf("opening %s blocked", spec)
		return nil, nil
	}
}

// loopDevice attaches a loop device to a new file of size bytes.
func loopDevice(t *testing.T, dir string, size int64) string {
	t.Helper()
	testenv.NeedRoot(t, "a loop device")
	f := filepath.Join(dir, "loop-backing.img")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", f).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func TestOpenFileTypes(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 12345), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link-to-fifo")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string // want "" = opens
		size       int64
	}{
		{img, "", 12345},
		{fifo, "a FIFO", 0},
		{link, "a FIFO", 0},
		{"/dev/zero", "a character device", 0},
		{"/dev/null", "a character device", 0},
		{filepath.Join(dir, "s.sock"), "a socket", 0},
		{dir, "a directory", 0},
		{filepath.Join(dir, "missing.img"), "no such file", 0},
	} {
		d, err := openWithin(t, tc.path, nil)
		if tc.want == "" {
			if err != nil || d.Size() != tc.size {
				t.Fatalf("%s: %v", tc.path, err)
			}
			d.Close()
			continue
		}
		if err == nil {
			d.Close()
			t.Fatalf("%s opened as a disk", tc.path)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %v, want %q", tc.path, err, tc.want)
		}
		if tc.want != "no such file" && !errors.Is(err, ErrNotADisk) {
			t.Fatalf("%s: not ErrNotADisk: %v", tc.path, err)
		}
	}
	t.Run("block device", func(t *testing.T) {
		dev := loopDevice(t, dir, 3<<20)
		d, err := openWithin(t, dev, nil)
		if err != nil || d.Size() != 3<<20 {
			t.Fatalf("block device %s: %v", dev, err)
		}
		d.Close()
	})
}

// TestGuardSeesRealPath: the guard judges where the open really lands,
// every symlink resolved, and a refusal opens nothing.
func TestGuardSeesRealPath(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "sub", "link")
	if err := os.Symlink("../disk.img", link); err != nil {
		t.Fatal(err)
	}
	var seen []Location
	refuse := errors.New("refused by the guard")
	_, err := openWithin(t, link, func(l Location) error {
		seen = append(seen, l)
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("guard's refusal not returned: %v", err)
	}
	if len(seen) != 1 || seen[0].Path != img || seen[0].Addr != "" {
		t.Fatalf("guard saw %+v, want the real path %s", seen, img)
	}
	// nbd:// hands the guard its address before any connection is made.
	seen = nil
	if _, err := openWithin(t, "nbd://192.0.2.1:10809/x", func(l Location) error {
		seen = append(seen, l)
		return refuse
	}); !errors.Is(err, refuse) || len(seen) != 1 || seen[0].Addr != "192.0.2.1:10809" {
		t.Fatalf("nbd guard: %v %+v", err, seen)
	}
	// An nbd+unix socket is judged by its real path too.
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Symlink(sock, filepath.Join(dir, "sub", "nbd-link")); err != nil {
		t.Fatal(err)
	}
	seen = nil
	if _, err := openWithin(t, "nbd+unix:///x?socket="+filepath.Join(dir, "sub", "nbd-link"), func(l Location) error {
		seen = append(seen, l)
		return refuse
	}); !errors.Is(err, refuse) || len(seen) != 1 || seen[0].Path != sock {
		t.Fatalf("nbd+unix guard: %v %+v", err, seen)
	}
	if _, err := openWithin(t, "nbd+unix:///x?socket="+img, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("nbd+unix with a file as socket: %v", err)
	}
}
