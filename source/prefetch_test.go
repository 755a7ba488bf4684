package source

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"csbs/blockstore"
	"csbs/internal/testenv"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestPrefetchFeedsIngest backs up a qemu-nbd export through the ingest
// pipeline with read-ahead on, in full and then with changed-block
// tracking: every read the pipeline makes is served from the read-ahead
// (its prediction is exact), and the backups equal the image.
func TestPrefetchFeedsIngest(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "48M")
	run(t, "qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x12 5000k 1500k", "-c", "write -P 0x13 20M 64k", "-c", "write -P 0x14 47M 1M", img)
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	st, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	sock := filepath.Join(dir, "nbd.sock")
	backup := func(parent *blockstore.MapInfo) (*blockstore.PendingMap, int64, int64) {
		t.Helper()
		os.Remove(sock)
		cmd := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-B", "b0", "-x", "d", "-k", sock, "-t", img)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		testenv.WaitListening(t, sock)
		src, err := OpenNBD(ctx, "nbd+unix:///d?socket="+sock+"&dirty-bitmap=b0", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		src.Prefetch(int64(st.BlockSize()), parent != nil, 2<<20)
		p, err := st.Ingest(ctx, src, blockstore.IngestOptions{Parent: parent})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Commit(ctx, []*blockstore.PendingMap{p}, nil); err != nil {
			t.Fatal(err)
		}
		hits, misses := src.PrefetchStats()
		return p, hits, misses
	}
	check := func(p *blockstore.PendingMap) {
		t.Helper()
		raw := filepath.Join(dir, "d.raw")
		run(t, "qemu-img", "convert", "-O", "raw", img, raw)
		want, _ := os.ReadFile(raw)
		v, err := st.OpenVolume(p.Info.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		got, err := io.ReadAll(io.NewSectionReader(v, 0, v.Size()))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("backup differs from the image (%v)", err)
		}
	}
	full, hits, misses := backup(nil)
	check(full)
	if hits == 0 || misses != 0 {
		t.Fatalf("full read: %d reads from the read-ahead, %d missed", hits, misses)
	}
	run(t, "qemu-io", "-c", "write -P 0x21 64k 64k", "-c", "write -P 0x22 5100k 200k", "-c", "write -P 0x23 30M 128k", img)
	incr, hits, misses := backup(&full.Info)
	check(incr)
	if hits == 0 || misses != 0 || incr.Info.Stats.ReadBytes > 640<<10 {
		t.Fatalf("changed blocks: %d from the read-ahead, %d missed, read %d bytes", hits, misses, incr.Info.Stats.ReadBytes)
	}
}
