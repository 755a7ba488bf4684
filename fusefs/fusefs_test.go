package fusefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/testenv"
)

// image is a disk image in memory whose reads fail from failAt on.
type image struct {
	b      []byte
	failAt int64 // -1: never
	err    error
}

func (m *image) Size() int64 { return int64(len(m.b)) }

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	if m.failAt >= 0 && off+int64(len(p)) > m.failAt {
		return 0, m.err
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// tree is a catalog in memory: paths are joined with "/"; a directory
// lists its entries, a disk opens its image.
type tree struct {
	dirs    map[string][]Entry
	images  map[string]*image
	listErr map[string]error

	opened, released atomic.Int64
}

func (t *tree) List(ctx context.Context, path []string) ([]Entry, error) {
	key := strings.Join(path, "/")
	if err := t.listErr[key]; err != nil {
		return nil, err
	}
	es, ok := t.dirs[key]
	if !ok {
		return nil, catalog.ErrNotFound
	}
	return es, nil
}

func (t *tree) Open(ctx context.Context, path []string) (Image, func(), error) {
	img, ok := t.images[strings.Join(path, "/")]
	if !ok {
		return nil, nil, catalog.ErrNotFound
	}
	t.opened.Add(1)
	var once sync.Once
	return img, func() { once.Do(func() { t.released.Add(1) }) }, nil
}

var created = time.Date(2026, 5, 1, 10, 30, 0, 0, time.UTC)

func newTree() *tree {
	disk := make([]byte, 3<<20+123)
	for i := range disk {
		disk[i] = byte(i * 7)
	}
	return &tree{
		dirs: map[string][]Entry{
			"":                 {{Name: "default", Mtime: created}, {Name: "broken", Mtime: created}},
			"default":          {{Name: "web1", Mtime: created}},
			"default/web1":     {{Name: "bk1", Mtime: created}},
			"default/web1/bk1": {{Name: "vda", Size: int64(len(disk)), Mtime: created}, {Name: "vdb", Size: 8192, Mtime: created}},
			"broken/gone":      nil,
		},
		listErr: map[string]error{
			"broken": &blockstore.CorruptMapError{Reason: "test"},
		},
		images: map[string]*image{
			"default/web1/bk1/vda": {b: disk, failAt: -1},
			"default/web1/bk1/vdb": {b: make([]byte, 8192), failAt: 4096, err: fmt.Errorf("read: %w", &blockstore.CorruptBlockError{Block: 1, Reason: "test"})},
		},
	}
}

func mount(t *testing.T, tr Tree) string {
	t.Helper()
	testenv.NeedFUSE(t)
	dir := t.TempDir()
	m, err := MountTree(dir, tr, Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return dir
}

// TestTree: directories list the tree's names, disks appear as .img
// files with their sizes, read-only modes and the backups' times.
func TestTree(t *testing.T) {
	tr := newTree()
	dir := mount(t, tr)
	names := func(path string) []string {
		es, err := os.ReadDir(filepath.Join(dir, path))
		if err != nil {
			t.Fatalf("readdir %s: %v", path, err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name())
		}
		return out
	}
	if got := names(""); !slices.Equal(got, []string{"broken", "default"}) && !slices.Equal(got, []string{"default", "broken"}) {
		t.Fatalf("root lists %v", got)
	}
	if got := names("default/web1/bk1"); !slices.Equal(got, []string{"vda.img", "vdb.img"}) {
		t.Fatalf("backup lists %v", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "default/web1"))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o555 || !fi.ModTime().Equal(created) {
		t.Fatalf("server dir: %v %v", fi, err)
	}
	fi, err = os.Stat(filepath.Join(dir, "default/web1/bk1/vda.img"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o444 || fi.Size() != int64(len(tr.images["default/web1/bk1/vda"].b)) || !fi.ModTime().Equal(created) {
		t.Fatalf("image: %v %v", fi, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Blocks != (st.Size+511)/512 {
		t.Fatalf("image reports %d blocks of 512 bytes for %d bytes", st.Blocks, st.Size)
	}
}

// TestReadImage: an image reads as the tree's bytes, at any offset and
// length, to its exact end; it opens read-only and is released on close.
func TestReadImage(t *testing.T) {
	tr := newTree()
	dir := mount(t, tr)
	want := tr.images["default/web1/bk1/vda"].b
	got, err := os.ReadFile(filepath.Join(dir, "default/web1/bk1/vda.img"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read image: %d bytes, %v", len(got), err)
	}
	f, err := os.Open(filepath.Join(dir, "default/web1/bk1/vda.img"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10000)
	for _, off := range []int64{1, 4095, 1 << 20, int64(len(want)) - 100} {
		n, err := f.ReadAt(buf, off)
		end := min(off+int64(len(buf)), int64(len(want)))
		if int64(n) != end-off || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(buf[:n], want[off:end]) {
			t.Fatalf("read at %d: %d bytes, %v", off, n, err)
		}
	}
	f.Close()
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR} {
		if _, err := os.OpenFile(filepath.Join(dir, "default/web1/bk1/vda.img"), flag, 0); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("open for writing (%d): %v, want EROFS", flag, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for tr.released.Load() != tr.opened.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("%d opens, %d releases after every file was closed", tr.opened.Load(), tr.released.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReadAhead: a mount's kernel read-ahead is readAhead, not the 128 KiB
// every FUSE mount starts with (cold sequential reads wait on it).
func TestReadAhead(t *testing.T) {
	dir := mount(t, newTree())
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(readAheadFile(st.Dev))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != fmt.Sprint(readAhead>>10) {
		t.Fatalf("read_ahead_kb of the mount: %s, want %d", got, readAhead>>10)
	}
}

// TestErrno: what the tree and the image report becomes one errno each,
// through the kernel.
func TestErrno(t *testing.T) {
	dir := mount(t, newTree())
	cases := []struct {
		name string
		op   func() error
		want syscall.Errno
	}{
		{"unknown project", func() error { _, err := os.Stat(filepath.Join(dir, "nosuch")); return err }, syscall.ENOENT},
		{"disk without .img", func() error { _, err := os.Stat(filepath.Join(dir, "default/web1/bk1/vda")); return err }, syscall.ENOENT},
		{"directory listed by nobody", func() error { _, err := os.ReadDir(filepath.Join(dir, "default/web2")); return err }, syscall.ENOENT},
		{"damaged map", func() error { _, err := os.ReadDir(filepath.Join(dir, "broken")); return err }, syscall.EIO},
		{"damaged block", func() error { _, err := os.ReadFile(filepath.Join(dir, "default/web1/bk1/vdb.img")); return err }, syscall.EIO},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
}

// TestToErrno is the mapping itself, row by row.
func TestToErrno(t *testing.T) {
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", catalog.ErrNotFound), syscall.ENOENT},
		{fmt.Errorf("x: %w", blockstore.ErrMapNotFound), syscall.ENOENT},
		{&blockstore.CorruptBlockError{}, syscall.EIO},
		{&blockstore.MissingBlockError{}, syscall.EIO},
		{fmt.Errorf("read: %w", &blockstore.CorruptMapError{}), syscall.EIO},
		// Only when the kernel interrupted the request: a reader that gets
		// EINTR (Go's os package among them) simply asks again.
		{context.Canceled, syscall.EINTR},
		{errors.New("anything else"), syscall.EIO},
	}
	for _, tc := range cases {
		if got := toErrno(tc.err); got != tc.want {
			t.Errorf("toErrno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestCleanStale leaves a directory that is no mount alone.
func TestCleanStale(t *testing.T) {
	cleaned, err := CleanStale(t.TempDir())
	if cleaned || err != nil {
		t.Fatalf("CleanStale of a plain directory: %v %v", cleaned, err)
	}
}
