package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/blockstore"
	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

type bytesSource []byte

func (b bytesSource) Size() int64 { return int64(len(b)) }
func (b bytesSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

type staticExports map[string]*Export

func (s staticExports) Lookup(n string) (*Export, bool) { e, ok := s[n]; return e, ok }
func (s staticExports) Names() []string {
	var out []string
	for n := range s {
		out = append(out, n)
	}
	return out
}

// memDevice is a writable in-memory disk.
type memDevice struct {
	mu      sync.Mutex
	b       []byte
	flushes int
}

func (m *memDevice) Size() int64 { return int64(len(m.b)) }
func (m *memDevice) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}
func (m *memDevice) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.b[off:], p), nil
}
func (m *memDevice) Flush() error { m.mu.Lock(); m.flushes++; m.mu.Unlock(); return nil }

// snapshot returns a copy of the contents and the flush count, read
// under the lock (the server's goroutines wrote them).
func (m *memDevice) snapshot() ([]byte, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.b), m.flushes
}

// failingDevice fails reads in a range, as a corrupt backup block does.
type failingDevice struct{ Device }

func (f failingDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 8192 && off+int64(len(p)) > 4096 {
		return 0, &blockstore.CorruptBlockError{Block: 1, Reason: "injected"}
	}
	return f.Device.ReadAt(p, off)
}

// gatherDevice answers a read only once want reads are in its ReadAt at
// the same time (or fails it after 5 s): a server that serves a burst of
// requests one after another cannot get past it.
type gatherDevice struct {
	Device
	want    int
	mu      sync.Mutex
	waiting int
	all     chan struct{}
}

func (g *gatherDevice) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	g.waiting++
	if g.waiting == g.want {
		close(g.all)
	}
	g.mu.Unlock()
	select {
	case <-g.all:
		return g.Device.ReadAt(p, off)
	case <-time.After(5 * time.Second):
		return 0, errors.New("the other reads of the burst never came")
	}
}

// warmGather is a gatherDevice that answers a read at offset 0 at once:
// a client warms a connection's workers up with it before a burst.
type warmGather struct{ *gatherDevice }

func (w warmGather) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		return w.Device.ReadAt(p, off)
	}
	return w.gatherDevice.ReadAt(p, off)
}

// cachedMem is a memDevice whose first 4 MiB its caches always hold:
// reads there are answered by the request reader itself.
type cachedMem struct{ *memDevice }

func (c cachedMem) ReadCached(p []byte, off int64) bool {
	if off+int64(len(p)) > 4<<20 {
		return false
	}
	_, err := c.ReadAt(p, off)
	return err == nil
}

type fixture struct {
	sock, img string
	store     *blockstore.Store
	mem       *memDevice
	vol       *blockstore.Volume
	budget    *blockstore.Budget
}

func serve(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	img := testdisk.Ext4(t, dir, 48, 16, 3)
	// A block cache far smaller than the image: reads go past it to the
	// read cache file and the store.
	st, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{CacheBytes: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Ingest(context.Background(), bytesSource(raw), blockstore.IngestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(context.Background(), []*blockstore.PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	vol, err := st.OpenVolume(p.Info.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Re-reads come from a read cache file, as for the daemon's attached
	// exports.
	if err := vol.EnableReadCache(dir, 16<<20); err != nil {
		t.Fatal(err)
	}
	mem := &memDevice{b: make([]byte, 8<<20)}
	exports := staticExports{
		"backup":  {Name: "backup", Device: VolumeDevice{vol}, ReadOnly: true, PreferredBlock: 65536},
		"scratch": {Name: "scratch", Device: mem},
		"broken":  {Name: "broken", Device: failingDevice{mem}, ReadOnly: true},
		"gather":  {Name: "gather", Device: &gatherDevice{Device: mem, want: 8, all: make(chan struct{})}, ReadOnly: true},
		"cached":  {Name: "cached", Device: cachedMem{mem}, ReadOnly: true},
		"gather2": {Name: "gather2", Device: warmGather{&gatherDevice{Device: mem, want: 2, all: make(chan struct{})}}, ReadOnly: true},
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// A small memory budget: requests wait for each other's buffers.
	budget := blockstore.NewBudget(4 << 20)
	// A short payload timeout: a client that stalls in a write's payload
	// is dropped within the tests' patience.
	// A connection may hold a quarter of it, like in the daemon.
	srv := &ExportServer{Exports: exports, Log: slog.New(slog.DiscardHandler), AllowList: true, MaxConnsPerExport: 32, Memory: budget, MaxConnMemory: 1 << 20, PayloadTimeout: 2 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		vol.Close()
		st.Close()
	})
	return &fixture{sock: sock, img: img, store: st, mem: mem, vol: vol, budget: budget}
}

// budgetReturned waits until every connection gave its buffers' budget
// back (connections end asynchronously after the client leaves).
func (f *fixture) budgetReturned(t *testing.T) {
	t.Helper()
	for range 1000 {
		if f.budget.Stats().Used == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("memory budget not returned: %+v", f.budget.Stats())
}

func (f *fixture) uri(name string) string { return "nbd+unix:///" + name + "?socket=" + f.sock }

func TestRealClients(t *testing.T) {
	testenv.NeedTools(t, "nbdinfo", "nbdcopy", "qemu-img", "qemu-io")
	f := serve(t)
	out, err := exec.Command("nbdinfo", "--json", f.uri("backup")).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var info struct {
		Exports []struct {
			Size     int64 `json:"export-size"`
			ReadOnly bool  `json:"is_read_only"`
			Pref     int64 `json:"block_size_preferred"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo json: %v\n%s", err, out)
	}
	fi, _ := os.Stat(f.img)
	if len(info.Exports) != 1 || info.Exports[0].Size != fi.Size() || !info.Exports[0].ReadOnly || info.Exports[0].Pref != 65536 {
		t.Fatalf("nbdinfo: %s", out)
	}
	list, err := exec.Command("nbdinfo", "--list", "--json", "nbd+unix:///?socket="+f.sock).CombinedOutput()
	if err != nil || !strings.Contains(string(list), `"backup"`) {
		t.Fatalf("nbdinfo --list: %v %s", err, list)
	}
	// Block status: the image has holes, and nbdinfo --map shows them.
	m, err := exec.Command("nbdinfo", "--map", f.uri("backup")).CombinedOutput()
	if err != nil || !strings.Contains(string(m), "hole,zero") || !strings.Contains(string(m), "data") {
		t.Fatalf("nbdinfo --map: %v\n%s", err, m)
	}

	copied := filepath.Join(t.TempDir(), "copy.img")
	if out, err := exec.Command("nbdcopy", f.uri("backup"), copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	if testdisk.SHA256(t, copied) != testdisk.SHA256(t, f.img) {
		t.Fatal("nbdcopy of the export differs from the image")
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", f.img, f.uri("backup")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
	// Writes to a read-only export fail and change nothing.
	out, err = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4096", f.uri("backup")).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "ermission") && !strings.Contains(string(out), "read-only") && !strings.Contains(string(out), "read only") {
		t.Fatalf("write to read-only export: %s", out)
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", f.img, f.uri("backup")).CombinedOutput(); err != nil {
		t.Fatalf("after refused write: %v\n%s", err, out)
	}

	// A writable export: qemu-io writes at unaligned offsets, flushes, reads back.
	out, err = exec.Command("qemu-io", "-f", "raw",
		"-c", "write -P 0xab 1000 70000", "-c", "write -z 200000 5000", "-c", "flush", "-c", "read -P 0xab 1000 70000",
		f.uri("scratch")).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "Pattern verification") {
		t.Fatalf("qemu-io on writable export: %v\n%s", err, out)
	}
	if b, flushes := f.mem.snapshot(); b[999] != 0 || b[1000] != 0xab || b[70999] != 0xab || b[71000] != 0 || flushes == 0 {
		t.Fatalf("writes landed wrong (flushes %d)", flushes)
	}

	// A failing read is an EIO reply, and the connection goes on.
	out, _ = exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 4096 4096", "-c", "read 65536 4096", f.uri("broken")).CombinedOutput()
	if !strings.Contains(string(out), "Input/output error") || !strings.Contains(string(out), "read 4096/4096 bytes at offset 65536") {
		t.Fatalf("corrupt block read: %s", out)
	}
}

func TestFio(t *testing.T) {
	testenv.NeedTools(t, "fio")
	f := serve(t)
	out, err := exec.Command("fio", "--name=rand", "--ioengine=nbd", "--uri="+f.uri("backup"), "--rw=randread", "--bs=4k",
		"--iodepth=16", "--size=16m", "--runtime=2", "--time_based", "--output-format=json").CombinedOutput()
	if err != nil {
		t.Fatalf("fio: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"error" : 0`) {
		t.Fatalf("fio reported errors:\n%s", out)
	}
}

func TestOwnClient(t *testing.T) {
	f := serve(t)
	ctx := context.Background()
	c, err := Dial(ctx, f.uri("backup"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want, _ := os.ReadFile(f.img)
	if c.Size() != int64(len(want)) || !c.ReadOnly() {
		t.Fatalf("size %d read-only %v", c.Size(), c.ReadOnly())
	}
	got := make([]byte, len(want))
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read whole export: %v", err)
	}
	var re *ErrRemote
	if _, err := c.WriteAt([]byte("x"), 0); !errors.As(err, &re) || re.Code != errPerm {
		t.Fatalf("write to read-only: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 10), c.Size()-5); !errors.Is(err, io.EOF) {
		t.Fatalf("read across end: %v", err)
	}
	if _, err := Dial(ctx, f.uri("nosuch")); err == nil || !strings.Contains(err.Error(), "no export named nosuch") {
		t.Fatalf("unknown export: %v", err)
	}
	// The client reads as a backup source too.
	w, err := Dial(ctx, f.uri("scratch"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 100000), 12345); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if b, _ := f.mem.snapshot(); b[12345] != 7 || b[112344] != 7 || b[112345] != 0 {
		t.Fatal("write through own client landed wrong")
	}
}

// hostile speaks raw protocol to the server.
func hostile(t *testing.T, sock string, script func(c net.Conn, r io.Reader)) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	hs := make([]byte, 18)
	if _, err := io.ReadFull(c, hs); err != nil {
		t.Fatal(err)
	}
	script(c, c)
}

func option(opt uint32, data []byte) []byte {
	be := binary.BigEndian
	b := be.AppendUint64(nil, magicOption)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// enterTransmission negotiates the fixed-newstyle handshake on c, whose
// greeting was read, and enters transmission with export name.
func enterTransmission(t *testing.T, c net.Conn, r io.Reader, name string) {
	t.Helper()
	c.Write(binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZeroes))
	c.Write(goOption(name))
	readUntilAck(t, r)
}

func goOption(name string) []byte {
	be := binary.BigEndian
	d := be.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = be.AppendUint16(d, 0)
	return option(optGo, d)
}

// readUntilAck skips option replies up to the ACK or an error.
func readUntilAck(t *testing.T, r io.Reader) uint32 {
	t.Helper()
	for {
		h := make([]byte, 20)
		if _, err := io.ReadFull(r, h); err != nil {
			t.Fatalf("option reply: %v", err)
		}
		typ := binary.BigEndian.Uint32(h[12:])
		io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(h[16:])))
		if typ == repAck || typ&(1<<31) != 0 {
			return typ
		}
	}
}

func rawRequest(typ uint16, cookie, off uint64, length uint32) []byte {
	be := binary.BigEndian
	b := be.AppendUint32(nil, magicRequest)
	b = be.AppendUint16(b, 0)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, length)
}

func simpleReply(t *testing.T, r io.Reader) (errno uint32, cookie uint64) {
	t.Helper()
	h := make([]byte, 16)
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("reply: %v", err)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

func TestHostileClients(t *testing.T) {
	f := serve(t)
	be := binary.BigEndian
	t.Run("unknown client flags", func(t *testing.T) {
		hostile(t, f.sock, func(c net.Conn, r io.Reader) {
			c.Write(be.AppendUint32(nil, 0xff00))
			if _, err := r.Read(make([]byte, 1)); err == nil {
				t.Fatal("server kept talking after bad client flags")
			}
		})
	})
	t.Run("bad option haggling", func(t *testing.T) {
		hostile(t, f.sock, func(c net.Conn, r io.Reader) {
			c.Write(be.AppendUint32(nil, clientFixed|clientNoZeroes))
			c.Write(option(77, []byte("junk")))
			if typ := readUntilAck(t, r); typ != repErrUnsup {
				t.Fatalf("unknown option: reply %#x", typ)
			}
			c.Write(option(optGo, []byte{0, 0, 0, 200, 'x'})) // name length beyond data
			if typ := readUntilAck(t, r); typ != repErrInvalid {
				t.Fatalf("malformed GO: %#x", typ)
			}
			c.Write(option(optSetMetaCtx, []byte{0, 0, 0, 0, 0, 0, 0, 0}))
			if typ := readUntilAck(t, r); typ != repErrInvalid {
				t.Fatalf("meta context before structured replies: %#x", typ)
			}
			c.Write(goOption("nosuch"))
			if typ := readUntilAck(t, r); typ != repErrUnknown {
				t.Fatalf("unknown export: %#x", typ)
			}
			// After all that, a proper GO still works.
			c.Write(goOption("backup"))
			if typ := readUntilAck(t, r); typ != repAck {
				t.Fatalf("GO after errors: %#x", typ)
			}
			c.Write(rawRequest(cmdRead, 1, 0, 512))
			if errno, cookie := simpleReply(t, r); errno != 0 || cookie != 1 {
				t.Fatalf("read: errno %d cookie %d", errno, cookie)
			}
		})
	})
	t.Run("huge option", func(t *testing.T) {
		hostile(t, f.sock, func(c net.Conn, r io.Reader) {
			c.Write(be.AppendUint32(nil, clientFixed|clientNoZeroes))
			c.Write(option(optList, nil)[:12])
			c.Write(be.AppendUint32(nil, 1<<30))
			if typ := readUntilAck(t, r); typ != repErrTooBig {
				t.Fatalf("huge option: %#x", typ)
			}
		})
	})
	t.Run("reads past the end, huge lengths, unknown commands", func(t *testing.T) {
		hostile(t, f.sock, func(c net.Conn, r io.Reader) {
			enterTransmission(t, c, r, "backup")
			size := uint64(48 << 20)
			c.Write(rawRequest(cmdRead, 1, size-10, 100))
			if errno, _ := simpleReply(t, r); errno != errInval {
				t.Fatalf("read past end: %d", errno)
			}
			c.Write(rawRequest(cmdRead, 2, 1<<62, 100))
			if errno, _ := simpleReply(t, r); errno != errInval {
				t.Fatalf("read at 2^62: %d", errno)
			}
			c.Write(rawRequest(cmdRead, 3, 0, 1<<31))
			if errno, _ := simpleReply(t, r); errno != errOverflow {
				t.Fatalf("2 GiB read: %d", errno)
			}
			c.Write(rawRequest(99, 4, 0, 0))
			if errno, _ := simpleReply(t, r); errno != errInval {
				t.Fatalf("unknown command: %d", errno)
			}
			c.Write(rawRequest(cmdBlockStatus, 5, 0, 4096))
			if errno, _ := simpleReply(t, r); errno != errInval {
				t.Fatalf("block status without meta context: %d", errno)
			}
			c.Write(rawRequest(cmdWrite, 6, 0, 4))
			c.Write([]byte("evil"))
			if errno, _ := simpleReply(t, r); errno != errPerm {
				t.Fatalf("write to read-only: %d", errno)
			}
			c.Write(rawRequest(cmdRead, 7, 0, 4))
			errno, cookie := simpleReply(t, r)
			data := make([]byte, 4)
			io.ReadFull(r, data)
			if errno != 0 || cookie != 7 || string(data) == "evil" {
				t.Fatalf("read after abuse: %d %d %q", errno, cookie, data)
			}
		})
	})
	t.Run("abrupt disconnects", func(t *testing.T) {
		for i := range 20 {
			c, err := net.Dial("unix", f.sock)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 1 {
				c.Write(be.AppendUint32(nil, clientFixed))
				c.Write(goOption("backup"))
				c.Write(rawRequest(cmdRead, 1, 0, 1<<20)) // leave without reading
			}
			c.Close()
		}
	})
	t.Run("others still served", func(t *testing.T) {
		c, err := Dial(context.Background(), f.uri("backup"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.ReadAt(make([]byte, 1<<20), 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("clients that leave with replies pending", func(t *testing.T) {
		// Reads the caches answer at once, then the client goes without
		// reading the replies: their buffers and budget must come back.
		c, err := Dial(context.Background(), f.uri("backup"))
		if err != nil {
			t.Fatal(err)
		}
		c.ReadAt(make([]byte, 256<<10), 0) // now cached
		c.Close()
		for range 10 {
			hostile(t, f.sock, func(c net.Conn, r io.Reader) {
				enterTransmission(t, c, r, "backup")
				var reqs []byte
				for k := range 64 {
					reqs = append(reqs, rawRequest(cmdRead, uint64(k), 0, 256<<10)...)
				}
				c.Write(reqs)
			})
		}
		// Answered reads, then a bad request in the same packet: the
		// server drops the connection with the replies unsent.
		hostile(t, f.sock, func(c net.Conn, r io.Reader) {
			enterTransmission(t, c, r, "backup")
			var reqs []byte
			for k := range 8 {
				reqs = append(reqs, rawRequest(cmdRead, uint64(k), uint64(k)*4096, 4096)...)
			}
			c.Write(append(reqs, make([]byte, 28)...))
			io.Copy(io.Discard, r)
		})
		f.budgetReturned(t)
	})
}

// TestManyConnections: 24 connections to one export at once, half
// reading their own region sequentially in 256 KiB requests with many in
// flight (interleaved streams), half reading at random offsets and
// lengths, plus nbdcopy (structured replies, several connections) and
// fio: every byte is compared with the image, through the block cache,
// the read cache file, read-ahead and a 4 MiB memory budget.
func TestManyConnections(t *testing.T) {
	f := serve(t)
	want, err := os.ReadFile(f.img)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(want))
	ctx := context.Background()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errs []error
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, err)
		}
	}
	check := func(c *Client, off int64, n int) {
		buf := make([]byte, n)
		if _, err := c.ReadAt(buf, off); err != nil {
			fail(fmt.Errorf("read %d at %d: %w", n, off, err))
			return
		}
		if !bytes.Equal(buf, want[off:off+int64(n)]) {
			fail(fmt.Errorf("read %d at %d: bytes differ from the image", n, off))
		}
	}
	var conns []*Client
	for k := range 24 {
		c, err := Dial(ctx, f.uri("backup"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if k%2 == 0 {
				// Sequential: 8 readers of 256 KiB chunks in flight over
				// this connection's region, twice (the second pass reads
				// what the first left in the caches).
				region := size / 12
				from := int64(k/2) * region
				for range 2 {
					var inner sync.WaitGroup
					next := make(chan int64)
					for range 8 {
						inner.Add(1)
						go func() {
							defer inner.Done()
							for off := range next {
								check(c, off, int(min(256<<10, from+region-off)))
							}
						}()
					}
					for off := from; off < from+region; off += 256 << 10 {
						next <- off
					}
					close(next)
					inner.Wait()
				}
				return
			}
			r := rand.New(rand.NewPCG(uint64(k), 3))
			for range 300 {
				n := 1 + r.IntN(300<<10)
				check(c, r.Int64N(size-int64(n)), n)
			}
		}()
	}
	if _, err := exec.LookPath("nbdcopy"); err == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(t.TempDir(), "copy.img")
			if b, err := exec.Command("nbdcopy", "--connections=4", f.uri("backup"), out).CombinedOutput(); err != nil {
				fail(fmt.Errorf("nbdcopy: %v: %s", err, b))
				return
			}
			if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
				fail(errors.New("nbdcopy's copy differs from the image"))
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if st := f.vol.ReadCacheStats(); st.Hits == 0 || st.Bad != 0 {
		t.Errorf("read cache: %+v", st)
	}
	for _, c := range conns {
		c.Close()
	}
	f.budgetReturned(t)
}

// TestDiscAfterQueuedInlineReplies: cached reads answered inline
// (their replies queued, not yet sent, holding budget), then a read that
// needs the whole budget (goes to a worker), then NBD_CMD_DISC, all in one
// packet: every request is answered and the budget comes back. (The
// connection used to wait for the worker before sending the queued
// replies, while the worker waited for the budget they held.)
func TestDiscAfterQueuedInlineReplies(t *testing.T) {
	f := serve(t)
	be := binary.BigEndian
	c, err := Dial(context.Background(), f.uri("backup"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // now cached
		for k := range 3 {
			c.ReadAt(make([]byte, 256<<10), int64(k)*256<<10)
		}
	}
	c.Close()
	f.budgetReturned(t)

	conn, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.ReadFull(conn, make([]byte, 18))
	enterTransmission(t, conn, conn, "backup")
	var reqs []byte
	for k := range 3 {
		reqs = append(reqs, rawRequest(cmdRead, uint64(k), uint64(k)*256<<10, 256<<10)...)
	}
	reqs = append(reqs, rawRequest(cmdRead, 3, 8<<20, 4<<20)...) // the whole 4 MiB budget
	reqs = append(reqs, rawRequest(cmdDisc, 4, 0, 0)...)
	conn.Write(reqs)
	got := 0
	for got < 4 {
		h := make([]byte, 16)
		if _, err := io.ReadFull(conn, h); err != nil {
			t.Fatalf("after %d replies: %v (budget %+v)", got, err, f.budget.Stats())
		}
		n := 256 << 10
		if be.Uint64(h[8:]) == 3 {
			n = 4 << 20
		}
		if be.Uint32(h[4:]) != 0 {
			n = 0
		}
		io.CopyN(io.Discard, conn, int64(n))
		got++
	}
	conn.Close()
	f.budgetReturned(t)
}

// TestWriteHeaderWithoutPayload: a client sends a WRITE header and
// never the payload. The payload's budget (here the whole budget) is held
// while it is awaited, so the connection is dropped after the payload
// timeout (2 s here) and other clients go on; without the timeout they
// waited as long as the hostile client stayed.
func TestWriteHeaderWithoutPayload(t *testing.T) {
	f := serve(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "backup")        // read-only: the payload is read (and refused) anyway
		conn.Write(rawRequest(cmdWrite, 1, 0, 32<<20)) // no payload follows
		time.Sleep(200 * time.Millisecond)
		f.otherClientReads(t, 1, 1<<20, "held by a client that sends no payload")
	})
}

// otherClientReads has a new client read n blocks of size bytes from 16
// MiB on; they must be answered within 5 s, while a hostile client holds
// on to what it holds (why says what).
func (f *fixture) otherClientReads(t *testing.T, n, size int, why string) {
	t.Helper()
	c, err := Dial(context.Background(), f.uri("backup"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		for k := range n {
			if _, err := c.ReadAt(make([]byte, size), 16<<20+int64(k*size)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("another client's %d reads of %d KiB waited 5 s: budget %+v %s", n, size>>10, f.budget.Stats(), why)
	}
}

// TestBurstServedInParallel: a client sends 8 reads at once; they are
// served by 8 workers at once. (The reader used to start a worker only
// when none was idle, counting a worker that had not yet taken its
// request as idle: a burst went to one worker, one request after
// another.)
func TestBurstServedInParallel(t *testing.T) {
	f := serve(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "gather")
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		readBurst(t, conn, r, 8, 0)
	})
}

// readBurst sends n reads of 4 KiB from off on in one write and checks
// that every one succeeds (the gather exports fail reads that are not
// served at the same time as the others).
func readBurst(t *testing.T, conn net.Conn, r io.Reader, n int, off uint64) {
	t.Helper()
	var reqs []byte
	for k := range n {
		reqs = append(reqs, rawRequest(cmdRead, uint64(1+k), off+uint64(k)*4096, 4096)...)
	}
	conn.Write(reqs)
	for range n {
		if errno, cookie := simpleReply(t, r); errno != 0 {
			t.Fatalf("read %d of a burst of %d failed with NBD error %d: served one after another", cookie, n, errno)
		}
		io.ReadFull(r, make([]byte, 4096))
	}
}

// TestBurstAfterIdleServedInParallel: a connection's worker served a
// read and waits for the next; the client then sends two reads at once,
// which are served at once. (A worker waiting in the channel is handed
// the first request directly and counted as idle until it runs: the
// reader saw an idle worker and no request queued, and started none for
// the second, which waited for the first.)
func TestBurstAfterIdleServedInParallel(t *testing.T) {
	f := serve(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "gather2")
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		conn.Write(rawRequest(cmdRead, 100, 0, 4096))
		if errno, _ := simpleReply(t, r); errno != 0 {
			t.Fatalf("warm-up read: NBD error %d", errno)
		}
		io.ReadFull(r, make([]byte, 4096))
		time.Sleep(50 * time.Millisecond) // the worker waits for a request
		readBurst(t, conn, r, 2, 4096)
	})
}

// TestShareServesInOrder: a read that must wait for its connection's
// share (1 MiB here) is not passed for ever by the small reads the
// request reader answers from the caches after it. (The share let the
// reader take it whenever a small read fitted, so a client streaming
// cached reads kept a read of the share's size waiting as long as the
// stream lasted; the memory budget itself serves in order.)
func TestShareServesInOrder(t *testing.T) {
	f := serve(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "cached")
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		const small, n = 64 << 10, 1000
		reqs := rawRequest(cmdRead, 0, 0, small)                     // holds a part of the share
		reqs = append(reqs, rawRequest(cmdRead, 1, 4<<20, 1<<20)...) // waits for all of it
		for k := range n {
			reqs = append(reqs, rawRequest(cmdRead, uint64(2+k), uint64(k%32)*small, small)...)
		}
		go conn.Write(reqs)
		for k := range n + 2 {
			errno, cookie := simpleReply(t, r)
			if errno != 0 {
				t.Fatalf("read %d: NBD error %d", cookie, errno)
			}
			if cookie == 1 {
				if k > 64 {
					t.Fatalf("the 1 MiB read was answered after %d of the %d small reads sent after it", k-1, n)
				}
				t.Logf("the 1 MiB read was answered %dth", k+1)
				io.ReadFull(r, make([]byte, 1<<20))
				continue
			}
			io.ReadFull(r, make([]byte, small))
		}
	})
	f.budgetReturned(t)
}

// TestSlowReaderHoldsOnlyItsShare: a client sends reads and never reads
// their replies. The replies wait in the server with their buffers until
// the reply timeout (2 minutes); the client may hold only its
// connection's share of the memory budget (1 MiB of 4 here), so another
// client's reads go on. Without the share it held the whole budget and
// the other client waited for that timeout.
func TestSlowReaderHoldsOnlyItsShare(t *testing.T) {
	f := serve(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "backup")
		var reqs []byte
		for k := range 32 {
			reqs = append(reqs, rawRequest(cmdRead, uint64(k), uint64(k%16)<<20, 1<<20)...)
		}
		conn.Write(reqs) // and never reads a reply
		time.Sleep(300 * time.Millisecond)
		f.otherClientReads(t, 4, 1<<20, "held by a client that reads no reply")
	})
}

// TestDiscThenLeave: the same packet, then the client closes its
// socket: the connection ends, its budget comes back and other clients'
// reads go on (they used to wait behind a worker that never got budget).
func TestDiscThenLeave(t *testing.T) {
	f := serve(t)
	c, err := Dial(context.Background(), f.uri("backup"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		for k := range 3 {
			c.ReadAt(make([]byte, 256<<10), int64(k)*256<<10)
		}
	}
	c.Close()
	f.budgetReturned(t)
	hostile(t, f.sock, func(conn net.Conn, r io.Reader) {
		enterTransmission(t, conn, r, "backup")
		var reqs []byte
		for k := range 3 {
			reqs = append(reqs, rawRequest(cmdRead, uint64(k), uint64(k)*256<<10, 256<<10)...)
		}
		reqs = append(reqs, rawRequest(cmdRead, 3, 8<<20, 4<<20)...)
		reqs = append(reqs, rawRequest(cmdDisc, 4, 0, 0)...)
		conn.Write(reqs)
		time.Sleep(200 * time.Millisecond)
	}) // closes the socket
	f.otherClientReads(t, 1, 64<<10, "after a client left with replies queued")
	f.budgetReturned(t)
}
