package engine

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"csbs/catalog"
	"csbs/internal/testenv"
)

// qemuNBDServer runs qemu-nbd on an image, read-only, optionally with a
// dirty bitmap exported (-B), until stop is called.
type qemuNBDServer struct {
	t    *testing.T
	img  string
	sock string
	cmd  *exec.Cmd
}

func (q *qemuNBDServer) start(bitmap string) {
	q.t.Helper()
	args := []string{"-r", "-f", "qcow2", "-x", "disk", "-k", q.sock, "-t", q.img}
	if bitmap != "" {
		args = append(args, "-B", bitmap)
	}
	os.Remove(q.sock)
	q.cmd = exec.Command("qemu-nbd", args...)
	if err := q.cmd.Start(); err != nil {
		q.t.Fatal(err)
	}
	testenv.WaitListening(q.t, q.sock)
}

func (q *qemuNBDServer) stop() {
	q.cmd.Process.Kill()
	q.cmd.Wait()
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestNBDDirtyBitmapSource backs up an NBD export whose URI names a
// dirty bitmap kept by the user's own tooling (qemu-nbd -B): the first
// backup reads everything, the next reads only what the bitmap marks and
// equals the image; a bitmap the export does not offer, or a different
// bitmap name than the last backup's, means a full read, said so.
func TestNBDDirtyBitmapSource(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	q := &qemuNBDServer{t: t, img: filepath.Join(dir, "disk.qcow2"), sock: filepath.Join(dir, "nbd.sock")}
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", q.img, "32M")
	runTool(t, "qemu-io", "-c", "write -P 0x11 0 6M", "-c", "write -P 0x12 20M 3M", q.img)
	runTool(t, "qemu-img", "bitmap", "--add", q.img, "b0")
	e := newTestEngine(t)
	uri := "nbd+unix:///disk?socket=" + q.sock + "&dirty-bitmap=b0"
	q.start("b0")
	s := e.addServer("nbd1", catalog.Disk{Name: "vda", Source: uri})
	b1, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	q.stop()
	d1 := b1.Disks[0]
	if d1.Bitmap != "b0" || d1.ChangedFrom != "" || !strings.Contains(d1.FullRead, "no earlier backup") || d1.ReadBytes < 9<<20 {
		t.Fatalf("first backup: %+v", d1)
	}

	// The user's tooling writes; b0 records it.
	runTool(t, "qemu-io", "-c", "write -P 0x21 1M 64k", "-c", "write -P 0x22 21M 128k", "-c", "write -P 0x23 30M 64k", q.img)
	q.start("b0")
	b2, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	q.stop()
	d2 := b2.Disks[0]
	if d2.ChangedFrom != b1.ID || d2.FullRead != "" {
		t.Fatalf("second backup not incremental: %+v", d2)
	}
	if d2.ReadBytes != 256<<10 {
		t.Fatalf("second backup read %d bytes, the bitmap marked 256 KiB", d2.ReadBytes)
	}
	raw := filepath.Join(dir, "disk.raw")
	runTool(t, "qemu-img", "convert", "-O", "raw", q.img, raw)
	want, _ := os.ReadFile(raw)
	got, _ := os.ReadFile(e.restoreDisk(b2, "vda"))
	if !bytes.Equal(got, want) {
		t.Fatalf("incremental backup differs from the image (at %d)", firstDiff(got, want))
	}

	// The export does not offer the bitmap: full read.
	q.start("")
	b3, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	q.stop()
	if d := b3.Disks[0]; d.ChangedFrom != "" || !strings.Contains(d.FullRead, "does not offer qemu:dirty-bitmap:b0") {
		t.Fatalf("export without the bitmap: %+v", d)
	}
	// Another bitmap name than the last backup's: full read.
	runTool(t, "qemu-img", "bitmap", "--add", q.img, "b1")
	q.start("b1")
	s = updateSource(t, e, s, "nbd+unix:///disk?socket="+q.sock+"&dirty-bitmap=b1")
	b4, err := e.backup(s, false)
	if err != nil {
		t.Fatal(err)
	}
	q.stop()
	if d := b4.Disks[0]; d.ChangedFrom != "" || !strings.Contains(d.FullRead, `tracked by dirty bitmap "b0", this source names "b1"`) {
		t.Fatalf("bitmap renamed: %+v", d)
	}
	// A plain NBD source (no bitmap) says nothing about changed blocks.
	q.start("")
	s5 := e.addServer("nbd2", catalog.Disk{Name: "vda", Source: "nbd+unix:///disk?socket=" + q.sock})
	b5, err := e.backup(s5, false)
	if err != nil {
		t.Fatal(err)
	}
	q.stop()
	if d := b5.Disks[0]; d.Bitmap != "" || d.FullRead != "" || d.ChangedFrom != "" || b5.Note != "" || d.ReadBytes >= 32<<20 {
		t.Fatalf("plain NBD source: %+v note %q (holes should not be read)", d, b5.Note)
	}
}
