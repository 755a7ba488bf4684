package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"csbs/internal/testenv"
)

// sparseImage writes a file of size bytes with data only in the given
// [start, end) ranges, holes elsewhere, and returns its content.
func sparseImage(t *testing.T, path string, size int64, data [][2]int64) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(7, 7))
	for _, d := range data {
		for i := d[0]; i < d[1]; i++ {
			want[i] = byte(r.Uint32() | 1)
		}
		if _, err := f.WriteAt(want[d[0]:d[1]], d[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestNextDataSkipsHoles: a sparse image reports its data extents, which
// cover every byte written and leave the big hole out; past the last data
// and past the end is io.EOF. Reads return the bytes, zeroes in holes.
func TestNextDataSkipsHoles(t *testing.T) {
	const mib = 1 << 20
	path := filepath.Join(t.TempDir(), "sparse.img")
	data := [][2]int64{{0, 4096}, {mib, mib + 8192}, {3 * mib, 3*mib + 100}}
	want := sparseImage(t, path, 4*mib, data)
	d, err := OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	var extents [][2]int64
	for off := int64(0); ; {
		start, end, err := d.NextData(ctx, off)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if start < off || end <= start || end > d.Size() {
			t.Fatalf("NextData(%d) = [%d, %d)", off, start, end)
		}
		extents = append(extents, [2]int64{start, end})
		off = end
	}
	covered := func(i int64) bool {
		for _, e := range extents {
			if i >= e[0] && i < e[1] {
				return true
			}
		}
		return false
	}
	for _, r := range data {
		for _, i := range []int64{r[0], r[1] - 1} {
			if !covered(i) {
				t.Fatalf("byte %d of data is in no extent %v", i, extents)
			}
		}
	}
	if covered(2 * mib) {
		t.Fatalf("extents %v include the middle of a 2 MiB hole", extents)
	}
	if _, _, err := d.NextData(ctx, d.Size()); !errors.Is(err, io.EOF) {
		t.Fatalf("NextData at the end: %v, want EOF", err)
	}
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read %d: %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back different bytes")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := d.NextData(canceled, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("NextData after cancel: %v", err)
	}
}

// TestNextDataBlockDevice: a block device has no holes to ask for, so
// all of it is data.
func TestNextDataBlockDevice(t *testing.T) {
	dev := loopDevice(t, t.TempDir(), 2<<20)
	d, err := OpenFile(dev, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	start, end, err := d.NextData(context.Background(), 4096)
	if err != nil || start != 4096 || end != 2<<20 {
		t.Fatalf("NextData = [%d, %d) %v, want [4096, %d)", start, end, err, 2<<20)
	}
}

// TestOpenSpecs: which specs open what; Validate opens, reports the size
// and closes again.
func TestOpenSpecs(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	size, err := Validate(context.Background(), img, nil)
	if err != nil || size != 8192 {
		t.Fatalf("Validate: %d %v", size, err)
	}
	for _, tc := range []struct{ spec, want string }{
		{"http://example.com/disk.img", "unknown URI scheme"},
		{"nbd://", "open source"},
		{"nbd+unix:///x", "open source"},
	} {
		if _, err := Open(context.Background(), tc.spec, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("Open(%q): %v, want %q", tc.spec, err, tc.want)
		}
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(canceled, img, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open after cancel: %v", err)
	}
}

// TestNBDSource reads a disk through an nbd+unix URI from qemu-nbd, as
// a running VM's disk would be exported, byte for byte.
func TestNBDSource(t *testing.T) {
	testenv.NeedTools(t, "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	want := sparseImage(t, img, 3<<20+512, [][2]int64{{0, 70000}, {2 << 20, 2<<20 + 512}})
	sock := filepath.Join(dir, "q.sock")
	q := exec.Command("qemu-nbd", "--read-only", "--format=raw", "--persistent", "--shared=4", "--export-name=vda", "--socket="+sock, img)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Process.Kill(); q.Wait() })
	testenv.WaitListening(t, sock)
	var seen []Location
	d, err := Open(context.Background(), "nbd+unix:///vda?socket="+sock, func(l Location) error {
		seen = append(seen, l)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(seen) != 1 || seen[0].Path != sock {
		t.Fatalf("guard saw %+v, want the socket %s", seen, sock)
	}
	if d.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", d.Size(), len(want))
	}
	got := make([]byte, len(want))
	for off := 0; off < len(got); off += 100000 {
		end := min(off+100000, len(got))
		if n, err := d.ReadAt(got[off:end], int64(off)); n != end-off || err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("read at %d: %d %v", off, n, err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the NBD source reads different bytes than the image")
	}
	if _, err := Open(context.Background(), "nbd+unix:///nosuch?socket="+sock, nil); err == nil {
		t.Fatal("an export qemu-nbd does not have opened")
	}
}
