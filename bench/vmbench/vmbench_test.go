// Package vmbench measures live VM backups against their peers (make
// bench-vm; skipped unless CSBS_BENCH_VM is set): an incremental backup of
// a 2 GiB VM disk with 1% changed, read with changed-block tracking versus
// read in full, and the speed of reading a QEMU NBD export, csbs versus
// qemu-img convert of the same export to a file. It prints medians and
// ratios and writes bench/results-vm.md; it asserts nothing about speed.
package vmbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/engine"
	"csbs/internal/testvm"
)

type rig struct {
	t       *testing.T
	e       *engine.Engine
	project catalog.Project
	close   func()
}

func newRig(t *testing.T, dir string) *rig {
	t.Helper()
	st, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	vmDir, err := os.MkdirTemp("", "csbsvm")
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeFn := func() { once.Do(func() { st.Close(); os.RemoveAll(vmDir) }) }
	t.Cleanup(closeFn)
	r := &rig{t: t, close: closeFn, e: &engine.Engine{Store: st, Catalog: catalog.New(st.KV(), catalog.Options{}), Now: time.Now, Log: benchLog(), VMDir: vmDir, Access: &access.Rules{}}}
	if err := r.e.Catalog.Update(func(tx *catalog.Txn) error {
		var err error
		r.project, err = tx.CreateProject(catalog.DefaultProject, time.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) server(name, src string) catalog.Server {
	r.t.Helper()
	src, size, err := r.e.CheckSource(context.Background(), access.Caller{Admin: true}, src)
	if err != nil {
		r.t.Fatal(err)
	}
	var s catalog.Server
	if err := r.e.Catalog.Update(func(tx *catalog.Txn) error {
		var err error
		s, err = tx.CreateServer(catalog.Server{Project: r.project.ID, Name: name, AZ: "az1", Disks: []catalog.Disk{{Name: "vda", Source: src, Size: size, ByAdmin: true}}, Created: time.Now()})
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	return s
}

// backup runs one backup and returns its wall time and the disk record.
func (r *rig) backup(s catalog.Server, full bool) (time.Duration, catalog.BackupDisk) {
	r.t.Helper()
	start := time.Now()
	b, err := r.e.Backup(context.Background(), catalog.Job{Project: r.project.ID, ServerID: s.ID, Trigger: catalog.TriggerManual, Full: full}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return time.Since(start), b.Disks[0]
}

// benchLog shows the engine's log with CSBS_BENCH_LOG set.
func benchLog() *slog.Logger {
	if os.Getenv("CSBS_BENCH_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// change writes new data over fraction of the disk's 64 KiB blocks
// through QEMU's block layer (HMP qemu-io on the disk's node), so the
// dirty bitmap records it as it records guest writes.
func change(t *testing.T, vm *testvm.VM, size int64, fraction float64, seed uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := rand.New(rand.NewPCG(seed, 9))
	blocks := size / (64 << 10)
	n := int(float64(blocks) * fraction)
	for i := 0; i < n; i++ {
		off := r.Int64N(blocks) * (64 << 10)
		cmd := fmt.Sprintf(`qemu-io %s "write -P %d %d 65536"`, vm.Node, 1+r.IntN(250), off)
		out, err := vm.Command(ctx, "human-monitor-command", map[string]any{"command-line": cmd})
		if err != nil {
			t.Fatal(err)
		}
		// qemu-io prints to QEMU's stdout; the monitor answers "" or an error.
		if string(out) != `""` {
			t.Fatalf("%s: %s", cmd, out)
		}
	}
}

// realFilesImage makes an ext4 image of sizeMiB filled to about 60% with
// real files (/usr/share, then libraries), as bench/run.sh does.
func realFilesImage(t *testing.T, work string, sizeMiB int) string {
	t.Helper()
	stage := filepath.Join(work, "stage")
	os.RemoveAll(stage)
	if err := os.MkdirAll(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	budget := int64(sizeMiB) * 6 / 10 << 20
	var used int64
	for i, d := range []string{"/usr/share", "/usr/lib/x86_64-linux-gnu", "/usr/local/go", "/usr/lib/gcc", "/usr/lib/python3", "/root/go/pkg/mod"} {
		if used >= budget {
			break
		}
		if _, err := os.Stat(d); err != nil {
			continue
		}
		dst := filepath.Join(stage, fmt.Sprintf("%d-%s", i, filepath.Base(d)))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || used >= budget {
				return nil
			}
			rel, _ := filepath.Rel(d, p)
			target := filepath.Join(dst, rel)
			switch {
			case e.IsDir():
				os.MkdirAll(target, 0o755)
			case e.Type().IsRegular():
				b, err := os.ReadFile(p)
				if err == nil && used+int64(len(b)) < budget {
					if os.WriteFile(target, b, 0o644) == nil {
						used += int64(len(b))
					}
				}
			}
			return nil
		})
	}
	img := filepath.Join(work, "real-files.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", stage, img, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	os.RemoveAll(stage)
	return img
}

func TestVMBench(t *testing.T) {
	if os.Getenv("CSBS_BENCH_VM") == "" {
		t.Skip("a benchmark: make bench-vm runs it (CSBS_BENCH_VM=1)")
	}
	reps := 3
	work := os.Getenv("BENCH_DIR")
	if work == "" {
		work = t.TempDir()
	}
	sizeMiB := 2048
	qcow := filepath.Join(work, "vm-disk.qcow2")
	if _, err := os.Stat(qcow); err != nil {
		t.Logf("building a %d MiB ext4 VM disk of real files in %s", sizeMiB, work)
		raw := realFilesImage(t, work, sizeMiB)
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v\n%s", err, out)
		}
		os.Remove(raw)
	}
	// Each run works on a copy, so runs start alike.
	disk := filepath.Join(work, "vm-run.qcow2")
	if out, err := exec.Command("cp", "--sparse=always", qcow, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	g := testvm.Build(t)
	vm := testvm.Start(t, g, testvm.Options{Disk: disk, NoAgent: true, Rate: 1, OverwriteEvery: -1, ShareRW: true})
	ctx := context.Background()
	// The guest is paused for the measurements: its own writes would only
	// add noise (TCG burns a core), and QEMU serves the disk all the same.
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	size := int64(sizeMiB) << 20

	var rows []string
	row := func(s string) { rows = append(rows, s); t.Log(s) }

	// 1. CBT incremental versus full read, 1% changed.
	r := newRig(t, filepath.Join(work, "cbt"))
	s := r.server("vm", "qmp+unix:///vda?socket="+vm.QMP)
	d0, first := r.backup(s, false)
	row(fmt.Sprintf("| first live VM backup (full read, new data, one run) | %.0f MB/s (%d MiB in %.1f s) | - | - | - | - |", float64(first.ReadBytes)/1e6/d0.Seconds(), first.ReadBytes>>20, d0.Seconds()))
	var tFull, tCBT, rFull, rCBT []float64
	for i := 0; i < reps; i++ {
		change(t, vm, size, 0.01, uint64(2*i))
		d, bd := r.backup(s, true)
		if bd.ChangedFrom != "" {
			t.Fatal("--full backup used CBT")
		}
		tFull, rFull = append(tFull, d.Seconds()), append(rFull, float64(bd.ReadBytes))
		change(t, vm, size, 0.01, uint64(2*i+1))
		d, bd = r.backup(s, false)
		if bd.ChangedFrom == "" {
			t.Fatalf("incremental read in full: %s", bd.FullRead)
		}
		tCBT, rCBT = append(tCBT, d.Seconds()), append(rCBT, float64(bd.ReadBytes))
	}
	row(fmt.Sprintf("| incremental live VM backup, 1%% of %d MiB changed | CBT: %.2f s, read %.1f MiB | full read (--full) | %.2f s, read %.1f MiB | %.1f× faster | ≥ 10× |",
		sizeMiB, median(tCBT), median(rCBT)/(1<<20), median(tFull), median(rFull)/(1<<20), median(tFull)/median(tCBT)))

	if os.Getenv("CSBS_BENCH_VM_CBT_ONLY") != "" {
		return
	}
	// 2. Reading a QEMU NBD export: csbs versus qemu-img convert.
	nbdSock := filepath.Join(vm.Dir, "bench-nbd.sock")
	if _, err := vm.Command(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": nbdSock}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Command(ctx, "block-export-add", map[string]any{"type": "nbd", "id": "bench", "node-name": vm.Node, "name": "vda", "writable": false}); err != nil {
		t.Fatal(err)
	}
	uri := "nbd+unix:///vda?socket=" + nbdSock
	data := float64(first.ReadBytes) // bytes with data: what either side reads
	var qimg, ours, oursDedup, oursVM []float64
	for _, d := range tFull {
		oursVM = append(oursVM, data/1e6/d)
	}
	for i := 0; i < reps; i++ {
		out := filepath.Join(work, "qemu-img-out.raw")
		start := time.Now()
		if o, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v\n%s", err, o)
		}
		qimg = append(qimg, data/1e6/time.Since(start).Seconds())
		os.Remove(out)

		fresh := newRig(t, filepath.Join(work, fmt.Sprintf("fresh-%d", i)))
		fs := fresh.server("plain", uri)
		d, _ := fresh.backup(fs, false)
		ours = append(ours, data/1e6/d.Seconds())
		d, _ = fresh.backup(fs, false)
		oursDedup = append(oursDedup, data/1e6/d.Seconds())
		fresh.close()
		os.RemoveAll(filepath.Join(work, fmt.Sprintf("fresh-%d", i)))
	}
	q := median(qimg)
	peer := fmt.Sprintf("qemu-img convert to a file | %.0f MB/s", q)
	row(fmt.Sprintf("| backup of a QEMU NBD export (%d MiB of data), new store | %.0f MB/s | %s | %.2f× | ≥ 0.8× |", int64(data)>>20, median(ours), peer, median(ours)/q))
	row(fmt.Sprintf("| backup of the same export, blocks already stored | %.0f MB/s | %s | %.2f× | ≥ 0.8× |", median(oursDedup), peer, median(oursDedup)/q))
	row(fmt.Sprintf("| live VM full read through the fleecing export, blocks stored | %.0f MB/s | %s | %.2f× | - |", median(oursVM), peer, median(oursVM)/q))

	load, _ := os.ReadFile("/proc/loadavg")
	report := fmt.Sprintf("# csbs live VM benchmark\n\n%d CPUs (load average at the end: %s), %s; %d MiB qcow2 VM disk (ext4, ~60%% real files), QEMU under TCG, guest paused while measuring, 1%% changes written through QEMU's block layer (qemu-io), so the dirty bitmap records them like guest writes; median of %d runs; %s\n\n| figure | csbs | peer | peer figure | ratio | target |\n|---|---|---|---|---|---|\n%s\n\nraw runs: full read %v s, CBT %v s, qemu-img %v MB/s, csbs new store %v MB/s, csbs blocks stored %v MB/s\n",
		runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "), runtime.Version(), sizeMiB, reps, time.Now().Format("2006-01-02"), strings.Join(rows, "\n"), tFull, tCBT, qimg, ours, oursDedup)
	if p := os.Getenv("BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Print(report)
}
