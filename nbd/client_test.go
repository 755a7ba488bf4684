package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	gonbdbackend "github.com/pojntfx/go-nbd/pkg/backend"
	gonbd "github.com/pojntfx/go-nbd/pkg/server"

	"csbs/internal/testenv"
)

// qemuNBD exports a qcow2 image with a dirty bitmap read-only with
// qemu-nbd -B, the way a user's own orchestration would: the bitmap b0 is
// added after the first 4 MiB were written, then two more writes land.
func qemuNBD(t *testing.T) (uri string, raw []byte) {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run("qemu-io", "-c", "write -P 0x11 0 4M", "-c", "write -P 0x44 40M 1M", img)
	run("qemu-img", "bitmap", "--add", img, "b0")
	run("qemu-io", "-c", "write -P 0x22 1M 64k", "-c", "write -P 0x33 20M 128k", img)
	rawPath := filepath.Join(dir, "disk.raw")
	run("qemu-img", "convert", "-O", "raw", img, rawPath)
	raw, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-B", "b0", "-x", "disk", "-k", sock, "-t", img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testenv.WaitListening(t, sock)
	return "nbd+unix:///disk?socket=" + sock, raw
}

func TestClientQemuNBD(t *testing.T) {
	uri, raw := qemuNBD(t)
	ctx := context.Background()
	c, err := DialOptions(ctx, uri, Options{MetaContexts: []string{MetaDirtyBitmap("b0"), MetaDirtyBitmap("nosuch")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Structured() || !c.HasContext(MetaBaseAllocation) || !c.HasContext(MetaDirtyBitmap("b0")) {
		t.Fatalf("structured %v, contexts %v", c.Structured(), c.contexts)
	}
	if c.HasContext(MetaDirtyBitmap("nosuch")) {
		t.Fatal("a bitmap the server does not have was agreed to")
	}
	if _, err := c.BlockStatus(ctx, MetaDirtyBitmap("nosuch"), 0, 1<<20); !errors.Is(err, ErrNoBlockStatus) {
		t.Fatalf("block status of a context not agreed: %v", err)
	}

	// Whole-export read in one call: many requests in flight, data and
	// hole chunks (qemu-nbd answers zero regions with OFFSET_HOLE).
	got := bytes.Repeat([]byte{0xee}, len(raw))
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("read differs from qemu-img convert of the same image")
	}
	// Unaligned reads from many goroutines.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; i < 50; i++ {
				off := r.Int64N(int64(len(raw)) - 1)
				n := 1 + r.Int64N(min(3<<20, int64(len(raw))-off))
				b := make([]byte, n)
				if _, err := c.ReadAt(b, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(b, raw[off:off+n]) {
					t.Errorf("read [%d, +%d) differs", off, n)
					return
				}
			}
		}(g)
	}
	wg.Wait()

	dirty := collect(t, c, MetaDirtyBitmap("b0"), StateDirty)
	want := [][2]int64{{1 << 20, 1<<20 + 64<<10}, {20 << 20, 20<<20 + 128<<10}}
	if !equalRanges(dirty, want) {
		t.Fatalf("dirty extents %v, want %v", dirty, want)
	}
	// Everything outside the allocated extents reads as zeros, and the
	// written regions are allocated.
	var data [][2]int64
	pos := int64(0)
	for pos < c.Size() {
		ext, err := c.BlockStatus(ctx, MetaBaseAllocation, pos, c.Size()-pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			if e.Flags&StateZero == 0 {
				data = append(data, [2]int64{e.Offset, e.End()})
			} else if !bytes.Equal(raw[e.Offset:e.End()], make([]byte, e.Length)) {
				t.Fatalf("extent %+v is marked zero but holds data", e)
			}
		}
		pos = ext[len(ext)-1].End()
	}
	if !covers(data, 0, 4<<20) || !covers(data, 40<<20, 41<<20) || !covers(data, 20<<20, 20<<20+128<<10) {
		t.Fatalf("allocation %v misses written regions", data)
	}
	// Reading past the end.
	if _, err := c.ReadAt(make([]byte, 10), c.Size()-5); !errors.Is(err, io.EOF) {
		t.Fatalf("read across end: %v", err)
	}
}

func collect(t *testing.T, c *Client, ctxName string, flag uint32) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for pos := int64(0); pos < c.Size(); {
		ext, err := c.BlockStatus(context.Background(), ctxName, pos, c.Size()-pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			if e.Flags&flag == 0 {
				continue
			}
			if k := len(out) - 1; k >= 0 && out[k][1] == e.Offset {
				out[k][1] = e.End()
			} else {
				out = append(out, [2]int64{e.Offset, e.End()})
			}
		}
		pos = ext[len(ext)-1].End()
	}
	return out
}

func equalRanges(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func covers(rs [][2]int64, from, to int64) bool {
	for _, r := range rs {
		if r[0] <= from && r[1] >= to {
			return true
		}
	}
	return false
}

// TestClientPlainServer reads from go-nbd's server, which refuses
// structured replies and meta contexts: the client falls back to simple
// replies and reports no block status.
func TestClientPlainServer(t *testing.T) {
	data := make([]byte, 5<<20+123)
	r := rand.New(rand.NewPCG(5, 5))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	sock := filepath.Join(t.TempDir(), "plain.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				gonbd.Handle(conn, []*gonbd.Export{{Name: "plain", Backend: gonbdbackend.NewMemoryBackend(data)}}, &gonbd.Options{ReadOnly: true})
			}()
		}
	}()
	c, err := DialOptions(context.Background(), "nbd+unix:///plain?socket="+sock, Options{MetaContexts: []string{MetaDirtyBitmap("b0")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Structured() || c.HasContext(MetaBaseAllocation) {
		t.Fatalf("go-nbd has no structured replies, yet structured=%v contexts=%v", c.Structured(), c.contexts)
	}
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read from a plain server: %v", err)
	}
	if _, err := c.BlockStatus(context.Background(), MetaBaseAllocation, 0, 4096); !errors.Is(err, ErrNoBlockStatus) {
		t.Fatalf("block status from a plain server: %v", err)
	}
}

// TestClientOwnServerStructured reads a backup from our own server with
// structured replies and block status (zero blocks of the backup are
// holes).
func TestClientOwnServerStructured(t *testing.T) {
	f := serve(t)
	c, err := Dial(context.Background(), f.uri("backup"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Structured() || !c.HasContext(MetaBaseAllocation) {
		t.Fatalf("structured %v contexts %v", c.Structured(), c.contexts)
	}
	want, _ := os.ReadFile(f.img)
	got := make([]byte, len(want))
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: %v", err)
	}
	zeros := 0
	for pos := int64(0); pos < c.Size(); {
		ext, err := c.BlockStatus(context.Background(), MetaBaseAllocation, pos, c.Size()-pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			if e.Flags&StateZero != 0 {
				zeros++
				if !bytes.Equal(want[e.Offset:e.End()], make([]byte, e.Length)) {
					t.Fatalf("extent %+v marked zero holds data", e)
				}
			}
		}
		pos = ext[len(ext)-1].End()
	}
	if zeros == 0 {
		t.Fatal("an ext4 image with free space has no zero extent")
	}
	// A failing read is an error reply (structured ERROR chunk) and the
	// connection goes on.
	b, err := Dial(context.Background(), f.uri("broken"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var re *ErrRemote
	if _, err := b.ReadAt(make([]byte, 4096), 4096); !errors.As(err, &re) || re.Code != errIO || re.Msg == "" {
		t.Fatalf("read of a failing device: %v", err)
	}
	if _, err := b.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("connection did not survive an error reply: %v", err)
	}
}

// TestClientLostConnectionIsNotEOF: when the server goes away (a VM that
// died), every read fails with ErrConnectionLost, never with an error
// that matches io.EOF, which readers take for the end of the disk (the
// last read of a disk may end at io.EOF and keep what it read: zeroes).
func TestClientLostConnectionIsNotEOF(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	sock := filepath.Join(t.TempDir(), "dies.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan net.Conn, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		conns <- conn
		gonbd.Handle(conn, []*gonbd.Export{{Name: "d", Backend: gonbdbackend.NewMemoryBackend(data)}}, &gonbd.Options{ReadOnly: true})
	}()
	c, err := Dial(context.Background(), "nbd+unix:///d?socket="+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 64<<10)
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("read before the server went away: %v", err)
	}
	(<-conns).Close()
	for _, off := range []int64{0, int64(len(data) - len(got))} { // the last read ends at the export's end
		clear(got)
		_, err := c.ReadAt(got, off)
		if !errors.Is(err, ErrConnectionLost) || errors.Is(err, io.EOF) {
			t.Fatalf("read at %d after the server went away: %v (io.EOF: %v)", off, err, errors.Is(err, io.EOF))
		}
	}
}
