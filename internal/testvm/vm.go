package testvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testdisk"
)

// Options describe one test VM.
type Options struct {
	// Disk is an existing data disk to boot with (a restarted or restored
	// VM); empty makes a new ext4 disk of DiskMiB with FillMiB of files.
	Disk    string
	DiskMiB int // default 64
	FillMiB int // default 4
	// Raw attaches the new disk as a raw image instead of qcow2.
	Raw bool
	// Drive attaches the disk with -drive (auto-generated node names, a
	// named block backend) instead of -blockdev with named nodes.
	Drive   bool
	NoAgent bool // no guest agent channel
	// ReadBps throttles reads of the disk's image file (bytes per
	// second; 0: no limit), which slows a backup down without slowing the
	// guest's writes.
	ReadBps int
	// Writer: records per second (default 50), a 64 KiB blob overwrite
	// every N records (default 10; -1 never), blob size (default 8 MiB).
	Rate, OverwriteEvery, BlobMiB int
	// SecondDiskMiB adds a second disk, raw and without a file system
	// (device vdb, node vdb-fmt), that the guest keeps overwriting in
	// 64 KiB chunks.
	SecondDiskMiB int
	// ShareRW lets other users of the disk's node write it beside the
	// guest (QEMU's qemu-io monitor command, in benchmarks).
	ShareRW bool
	// Extra QEMU arguments.
	Extra []string
}

// VM is a running test guest.
type VM struct {
	Dir string
	QMP string // QMP socket (for the code under test)
	// Ctl is a second QMP socket for the test itself: QEMU serves one
	// client per monitor, and the code under test holds its own.
	Ctl  string
	QGA  string // guest agent socket ("" without agent)
	Disk string // data disk image
	// Disk2 is the second disk's raw image (Options.SecondDiskMiB).
	Disk2 string
	// Node is the data disk's format node name (-blockdev) or "" with
	// Drive; Device is the virtio-blk device id ("vda").
	Node, Device string

	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}

	mu      sync.Mutex
	changed *sync.Cond
	synced  int64 // last record the writer reported durable, -1 before
	started bool
	console bytes.Buffer
}

// Start boots a VM and waits until its writer runs. The VM is killed
// when the test ends.
func Start(t testing.TB, g Guest, opt Options) *VM {
	t.Helper()
	dir, err := os.MkdirTemp("", "csbs-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if opt.DiskMiB == 0 {
		opt.DiskMiB = 64
	}
	if opt.FillMiB == 0 {
		opt.FillMiB = 4
	}
	if opt.Rate == 0 {
		opt.Rate = 50
	}
	if opt.OverwriteEvery == 0 {
		opt.OverwriteEvery = 10
	}
	if opt.BlobMiB == 0 {
		opt.BlobMiB = 8
	}
	disk := opt.Disk
	format := "qcow2"
	if disk == "" {
		raw := testdisk.Ext4(t, dir, opt.DiskMiB, opt.FillMiB, uint64(opt.DiskMiB))
		if opt.Raw {
			disk = filepath.Join(dir, "vda.raw")
			if err := os.Rename(raw, disk); err != nil {
				t.Fatal(err)
			}
		} else {
			disk = filepath.Join(dir, "vda.qcow2")
			if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v\n%s", err, out)
			}
			os.Remove(raw)
		}
	}
	if strings.HasSuffix(disk, ".raw") || strings.HasSuffix(disk, ".img") {
		format = "raw"
	}
	vm := &VM{Dir: dir, QMP: filepath.Join(dir, "qmp.sock"), Ctl: filepath.Join(dir, "ctl.sock"), Disk: disk, Device: "vda", t: t, synced: -1, exited: make(chan struct{})}
	vm.changed = sync.NewCond(&vm.mu)
	args := []string{
		"-nodefaults", "-machine", "pc,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256",
		"-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", g.Kernel, "-initrd", g.Initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet csbs.rate=%d csbs.every=%d csbs.blob=%d csbs.agent=%d",
			opt.Rate, max(opt.OverwriteEvery, 0), opt.BlobMiB, map[bool]int{false: 1, true: 0}[opt.NoAgent]),
		"-qmp", "unix:" + vm.QMP + ",server=on,wait=off",
		"-qmp", "unix:" + vm.Ctl + ",server=on,wait=off",
	}
	if opt.Drive {
		args = append(args, "-drive", fmt.Sprintf("file=%s,format=%s,if=none,id=drive-vda,cache=writeback", disk, format),
			"-device", "virtio-blk-pci,drive=drive-vda,id=vda")
	} else {
		vm.Node = "vda-fmt"
		if opt.ReadBps > 0 {
			args = append(args,
				"-object", fmt.Sprintf("throttle-group,id=tg0,x-bps-read=%d", opt.ReadBps),
				"-blockdev", fmt.Sprintf("driver=file,filename=%s,node-name=vda-raw", disk),
				"-blockdev", "driver=throttle,throttle-group=tg0,file=vda-raw,node-name=vda-file")
		} else {
			args = append(args, "-blockdev", fmt.Sprintf("driver=file,filename=%s,node-name=vda-file", disk))
		}
		dev := "virtio-blk-pci,drive=vda-fmt,id=vda"
		if opt.ShareRW {
			dev += ",share-rw=on"
		}
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=%s,file=vda-file,node-name=vda-fmt", format),
			"-device", dev)
	}
	if opt.SecondDiskMiB > 0 {
		vm.Disk2 = filepath.Join(dir, "vdb.raw")
		f, err := os.Create(vm.Disk2)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(int64(opt.SecondDiskMiB) << 20)
		f.Close()
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=file,filename=%s,node-name=vdb-file", vm.Disk2),
			"-blockdev", "driver=raw,file=vdb-file,node-name=vdb-fmt",
			"-device", "virtio-blk-pci,drive=vdb-fmt,id=vdb")
	}
	if !opt.NoAgent {
		vm.QGA = filepath.Join(dir, "qga.sock")
		args = append(args, "-chardev", "socket,path="+vm.QGA+",server=on,wait=off,id=qga0",
			"-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0")
	}
	args = append(args, opt.Extra...)
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	vm.cmd.Stderr = vm.cmd.Stdout
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go vm.readConsole(stdout)
	t.Cleanup(vm.Kill)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := vm.WaitSynced(ctx, -1); err != nil {
		t.Fatalf("VM did not start its writer: %v\nconsole:\n%s", err, vm.Console())
	}
	return vm
}

func (vm *VM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		vm.mu.Lock()
		if s, ok := strings.CutPrefix(line, "csbs-writer synced "); ok {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				vm.synced = n
			}
		} else {
			vm.console.WriteString(line + "\n")
			if s, ok := strings.CutPrefix(line, "csbs-writer started at "); ok {
				vm.started = true
				// A restarted writer found records 0..n-1 whole and
				// durable: they count as reported before its first new
				// one (a backup fixed before that holds them).
				if n, err := strconv.ParseInt(s, 10, 64); err == nil {
					vm.synced = max(vm.synced, n-1)
				}
			}
		}
		vm.changed.Broadcast()
		vm.mu.Unlock()
	}
	vm.cmd.Wait()
	vm.mu.Lock()
	vm.console.WriteString("[qemu exited]\n")
	vm.changed.Broadcast()
	vm.mu.Unlock()
	close(vm.exited)
}

// Console returns what the guest printed, without the writer's progress
// lines.
func (vm *VM) Console() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.console.String()
}

// Synced returns the last record the writer reported durable (-1: none).
func (vm *VM) Synced() int64 {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.synced
}

// WaitSynced waits until the writer runs and record n is durable.
func (vm *VM) WaitSynced(ctx context.Context, n int64) error {
	stop := context.AfterFunc(ctx, func() {
		vm.mu.Lock()
		vm.changed.Broadcast()
		vm.mu.Unlock()
	})
	defer stop()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for !vm.started || vm.synced < n {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for record %d (at %d): %w", n, vm.synced, err)
		}
		select {
		case <-vm.exited:
			return fmt.Errorf("VM exited waiting for record %d", n)
		default:
		}
		vm.changed.Wait()
	}
	return nil
}

// Exited is closed when the QEMU process has ended.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Kill ends QEMU at once (SIGKILL), as a crash would.
func (vm *VM) Kill() {
	if vm.cmd.Process != nil {
		vm.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-vm.exited
}

// Quit shuts QEMU down cleanly through QMP (persistent dirty bitmaps are
// written to the qcow2 image) and waits for it to exit.
func (vm *VM) Quit(ctx context.Context) error {
	if _, err := vm.Command(ctx, "quit", nil); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	select {
	case <-vm.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Command runs one QMP command on a fresh connection to the test's own
// monitor (Ctl) and returns its result. It is a minimal client of its own, independent of the code
// under test.
func (vm *VM) Command(ctx context.Context, name string, args any) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", vm.Ctl)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	dec := json.NewDecoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	send := func(cmd string, a any) (json.RawMessage, error) {
		req := map[string]any{"execute": cmd}
		if a != nil {
			req["arguments"] = a
		}
		if err := json.NewEncoder(c).Encode(req); err != nil {
			return nil, err
		}
		for {
			var resp struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class, Desc string
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := dec.Decode(&resp); err != nil {
				return nil, err
			}
			if resp.Event != "" {
				continue
			}
			if resp.Error != nil {
				return nil, fmt.Errorf("QMP %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
			}
			return resp.Return, nil
		}
	}
	if _, err := send("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return send(name, args)
}

// Stop pauses the guest's CPUs. QEMU drains and flushes every disk
// first, so while the VM is paused its image files are consistent and
// can be copied (qemu-img -U).
func (vm *VM) Stop(ctx context.Context) error {
	_, err := vm.Command(ctx, "stop", nil)
	return err
}

// Cont resumes a paused guest.
func (vm *VM) Cont(ctx context.Context) error {
	_, err := vm.Command(ctx, "cont", nil)
	return err
}

// CopyDisk copies the data disk as raw to dst with qemu-img, sharing the
// image with the running QEMU (-U): call it while the VM is paused.
func (vm *VM) CopyDisk(t testing.TB, dst string) { vm.copyImage(t, vm.Disk, dst) }

// CopyDisk2 copies the second disk like CopyDisk.
func (vm *VM) CopyDisk2(t testing.TB, dst string) { vm.copyImage(t, vm.Disk2, dst) }

func (vm *VM) copyImage(t testing.TB, src, dst string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("copy disk of paused VM: %v\n%s", err, out)
	}
}

// Bitmaps lists the dirty bitmaps QEMU has on the data disk's node.
func (vm *VM) Bitmaps(ctx context.Context) ([]Bitmap, error) {
	raw, err := vm.Command(ctx, "query-block", nil)
	if err != nil {
		return nil, err
	}
	var devs []struct {
		Qdev     string `json:"qdev"`
		Inserted *struct {
			DirtyBitmaps []Bitmap `json:"dirty-bitmaps"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return nil, err
	}
	for _, d := range devs {
		if (d.Qdev == vm.Device || strings.Contains(d.Qdev, "/"+vm.Device+"/")) && d.Inserted != nil {
			return d.Inserted.DirtyBitmaps, nil
		}
	}
	return nil, fmt.Errorf("no device %s in query-block", vm.Device)
}

// Bitmap is one dirty bitmap as query-block reports it.
type Bitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Busy         bool   `json:"busy"`
	Inconsistent bool   `json:"inconsistent"`
	Count        int64  `json:"count"`
}
