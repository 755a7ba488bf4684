// Package testdisk builds real disk images for tests: ext4 file systems
// made with mkfs.ext4 and filled with files, and sparse images.
package testdisk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Ext4 makes an ext4 image of sizeMiB MiB in dir, filled with about
// fillMiB MiB of files (random binary files, repetitive text files, and
// copies of /usr/share/common-licenses), and returns its path. seed makes
// the content reproducible. It fails the test when mkfs.ext4 is missing.
func Ext4(t testing.TB, dir string, sizeMiB, fillMiB int, seed uint64) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatalf("mkfs.ext4 not found (apt-get install e2fsprogs): %v", err)
	}
	root := filepath.Join(dir, fmt.Sprintf("ext4-root-%d", seed))
	Fill(t, root, fillMiB, seed)
	img := filepath.Join(dir, fmt.Sprintf("disk-%d.ext4", seed))
	out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", root, img, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	os.RemoveAll(root)
	return img
}

// Fill writes about mib MiB of files under root.
func Fill(t testing.TB, root string, mib int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 77))
	must := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc", "app"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "var", "log"), 0o755))
	written := 0
	for i := 0; written < mib<<20; i++ {
		var b []byte
		var path string
		switch i % 3 {
		case 0:
			b = make([]byte, 64<<10+r.IntN(1<<20))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			path = filepath.Join(root, "bin", fmt.Sprintf("prog%d", i))
		case 1:
			var sb strings.Builder
			for sb.Len() < 32<<10+r.IntN(512<<10) {
				fmt.Fprintf(&sb, "%06d backup job %d finished in %d ms for server ecs-%d\n", sb.Len(), r.IntN(1000), r.IntN(99999), r.IntN(50))
			}
			b = []byte(sb.String())
			path = filepath.Join(root, "var", "log", fmt.Sprintf("app%d.log", i))
		default:
			b = []byte(strings.Repeat(fmt.Sprintf("key%d = value %d\n", i, r.IntN(100)), 1+r.IntN(2000)))
			path = filepath.Join(root, "etc", "app", fmt.Sprintf("conf%d.toml", i))
		}
		must(os.WriteFile(path, b, 0o644))
		written += len(b)
	}
	if lic, err := os.ReadDir("/usr/share/common-licenses"); err == nil {
		must(os.MkdirAll(filepath.Join(root, "licenses"), 0o755))
		for _, e := range lic {
			if b, err := os.ReadFile(filepath.Join("/usr/share/common-licenses", e.Name())); err == nil && e.Type().IsRegular() {
				must(os.WriteFile(filepath.Join(root, "licenses", e.Name()), b, 0o644))
			}
		}
	}
}

// Sparse makes a sparse image of size bytes with random data written at
// the given offsets (length n each), and returns its path.
func Sparse(t testing.TB, dir string, size int64, n int, offsets ...int64) string {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("sparse-%d.img", size))
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(size), 1))
	for _, off := range offsets {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// SHA256 returns the hex SHA-256 of a file's contents.
func SHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Modify flips one byte in fraction of the 64 KiB blocks of the image at
// path (at least one), reproducibly, and returns how many blocks changed.
func Modify(t testing.TB, path string, fraction float64, seed uint64) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	blocks := int(fi.Size() / (64 << 10))
	want := max(1, int(float64(blocks)*fraction))
	r := rand.New(rand.NewPCG(seed, 3))
	done := map[int]bool{}
	for len(done) < want {
		i := r.IntN(blocks)
		if done[i] {
			continue
		}
		done[i] = true
		off := int64(i)*(64<<10) + int64(r.IntN(64<<10))
		b := []byte{0}
		f.ReadAt(b, off)
		b[0] ^= 0x5a
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// CorruptStored flips one byte of the stored copy of needle (bytes of a
// block kept uncompressed, compression "none") in the pack files of the
// store in storeDir, as a failing disk would. It fails the test if the
// bytes are in no pack.
func CorruptStored(t testing.TB, storeDir string, needle []byte) {
	t.Helper()
	packs, err := filepath.Glob(filepath.Join(storeDir, "packs", "*", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range packs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, needle); i >= 0 {
			b[i+len(needle)/2] ^= 0xff
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("stored bytes not found in any of %d packs under %s", len(packs), storeDir)
}
