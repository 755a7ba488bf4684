package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"csbs/api"
	appl "csbs/bench/internal/appliance"
	"csbs/nbd"
)

// appliance is a csbs daemon in a temp dir driven by the CLI.
type appliance struct {
	b      *bench
	dir    string
	cfg    string
	daemon *exec.Cmd
}

func (b *bench) startAppliance(dir string) *appliance {
	a := &appliance{b: b, dir: dir, cfg: filepath.Join(dir, "csbs.toml")}
	os.WriteFile(a.cfg, []byte("data_dir = \"csbs\"\n[log]\nlevel = \"warn\"\n[store]\ncompression = \""+b.codec+"\"\n"), 0o600)
	a.daemon = exec.Command(b.csbs, "serve", "--config", a.cfg)
	a.daemon.Stderr = os.Stderr
	if err := a.daemon.Start(); err != nil {
		log.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if exec.Command(b.csbs, "--config", a.cfg, "status").Run() == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return a
}

func (a *appliance) cli(args ...string) (time.Duration, string) {
	return run(a.b.csbs, append([]string{"--config", a.cfg}, args...)...)
}

func (a *appliance) stop() {
	a.daemon.Process.Signal(syscall.SIGTERM)
	a.daemon.Wait()
}

func (a *appliance) exportURI(kind string) string {
	_, out := a.cli("export", "ls", "--json")
	var es []struct{ Kind, URI string }
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		log.Fatalf("export ls: %v %s", err, out)
	}
	for _, e := range es {
		if e.Kind == kind {
			return e.URI
		}
	}
	log.Fatalf("no %s export in %s", kind, out)
	return ""
}

// fioIOPS runs fio's nbd engine for a few seconds and returns read IOPS.
func fioIOPS(uri string, depth int) float64 {
	_, out := run("fio", "--name=r", "--ioengine=nbd", "--uri="+uri, "--rw=randread", "--bs=4k",
		"--iodepth="+strconv.Itoa(depth), "--runtime=8", "--time_based", "--output-format=json")
	var res struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) == 0 {
		log.Fatalf("fio output: %v\n%s", err, out)
	}
	return res.Jobs[0].Read.IOPS
}

// firstByte measures from `restore start --instant` to the first byte
// read through the new export.
func (a *appliance) firstByte(backup, target string) time.Duration {
	start := time.Now()
	_, out := a.cli("restore", "start", backup, "--instant", "--rate", "1MiB/s", "--json", "--disk", "vda="+target)
	var r struct {
		ID      string `json:"id"`
		Targets []struct {
			Export string `json:"export"`
		} `json:"targets"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		log.Fatalf("restore start: %v %s", err, out)
	}
	sock, _ := filepath.Abs(filepath.Join(a.dir, "csbs", "nbd.sock"))
	c, err := nbd.Dial(context.Background(), "nbd+unix:///"+r.Targets[0].Export+"?socket="+sock)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 512)
	if _, err := c.ReadAt(buf, 0); err != nil {
		log.Fatal(err)
	}
	d := time.Since(start)
	c.Close()
	a.cli("restore", "cancel", r.ID)
	return d
}

func (b *bench) nbdFigures() {
	dir, err := os.MkdirTemp(b.work, "nbd-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	a := b.startAppliance(dir)
	defer a.stop()
	rss := sampleRSS(a.daemon.Process.Pid)
	defer func() {
		rss.finish()
		f := b.fig("memory", "daemon peak anonymous memory, NBD, hydration, FUSE", "MiB", "", false, "-")
		f.ours = append(f.ours, float64(rss.peakAnon)/(1<<10))
	}()
	a.cli("server", "add", "--name", "img", "--disk", "vda="+b.image)
	a.cli("backup", "create", "img", "--full", "--enable-instant-restore", "--name", "golden", "--wait")
	a.cli("backup", "attach", "golden")
	ours := a.exportURI("attach")

	qsock := filepath.Join(dir, "qemu.sock")
	q := exec.Command("qemu-nbd", "--read-only", "--format=raw", "--persistent", "--shared=8", "--socket="+qsock, b.image)
	if err := q.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(qsock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	peer := "nbd+unix:///?socket=" + qsock

	add := func(name, unit string, o, p float64, target string) {
		f := b.fig("nbd", name, unit, "qemu-nbd", true, target)
		f.ours = append(f.ours, o)
		f.peer = append(f.peer, p)
	}
	var seqCPU [2]float64
	seq := func(uri string, pid, k int) float64 {
		c0 := cpuOf(pid)
		d, _ := run("nbdcopy", uri, "null:")
		seqCPU[k] = (cpuOf(pid) - c0) / gib(b.size)
		return mbps(b.size, d)
	}
	add("sequential read, cold (nbdcopy to null)", "MB/s", seq(ours, a.daemon.Process.Pid, 0), seq(peer, q.Process.Pid, 1), "≥ 0.8×")
	cf := b.fig("cpu", "NBD sequential read: server CPU seconds per GiB (csbs vs qemu-nbd)", "s/GiB", "qemu-nbd", false, "")
	cf.ours = append(cf.ours, seqCPU[0])
	cf.peer = append(cf.peer, seqCPU[1])
	add("random 4 KiB read, QD1 (fio nbd)", "IOPS", fioIOPS(ours, 1), fioIOPS(peer, 1), "≥ 0.8×")
	add("random 4 KiB read, QD32 (fio nbd)", "IOPS", fioIOPS(ours, 32), fioIOPS(peer, 32), "≥ 1.0×")

	// Time to first byte of an instant restore, for this image and a
	// 1 TiB sparse disk.
	ttfb := b.fig("nbd", "instant restore: start to first byte, "+strconv.FormatInt(b.size>>20, 10)+" MiB disk", "ms", "", false, "< 100 ms")
	ttfb.ours = append(ttfb.ours, float64(a.firstByte("golden", filepath.Join(dir, "ttfb.img")).Microseconds())/1000)
	huge := filepath.Join(dir, "huge.img")
	f, _ := os.Create(huge)
	f.Truncate(1 << 40)
	f.WriteAt([]byte(strings.Repeat("csbs", 1<<18)), 1<<39)
	f.Close()
	a.cli("server", "add", "--name", "huge", "--disk", "vda="+huge)
	a.cli("backup", "create", "huge", "--full", "--name", "huge-golden", "--wait")
	tb := b.fig("nbd", "instant restore: start to first byte, 1 TiB sparse disk", "ms", "", false, "< 100 ms")
	tb.ours = append(tb.ours, float64(a.firstByte("huge-golden", filepath.Join(dir, "ttfb-huge.img")).Microseconds())/1000)

	// Hydration speed, unlimited, against cp of the same image; both end
	// synced to disk (a hydration is complete only once its data and bits
	// are durable).
	target := filepath.Join(dir, "hydrated.img")
	hydCPU0 := cpuOf(a.daemon.Process.Pid)
	start := time.Now()
	_, out := a.cli("restore", "start", "golden", "--instant", "--rate", "0", "--json", "--disk", "vda="+target)
	var r struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(out), &r)
	tok, _ := os.ReadFile(filepath.Join(dir, "csbs", "admin.token"))
	poll := &appl.Appliance{API: api.NewUnixClient(filepath.Join(dir, "csbs", "csbs.sock"), strings.TrimSpace(string(tok)))}
	if err := poll.WaitHydrated(context.Background(), r.ID); err != nil {
		log.Fatalf("hydration: %v", err)
	}
	hyd := mbps(b.size, time.Since(start))
	hydCPU := (cpuOf(a.daemon.Process.Pid) - hydCPU0) / gib(b.size)
	a.cli("restore", "finish", r.ID)
	os.Remove(target)
	cp0 := childrenCPU()
	d, _ := run("sh", "-c", "cp '"+b.image+"' '"+target+"' && sync '"+target+"'")
	cpCPU := (childrenCPU() - cp0) / gib(b.size)
	os.Remove(target)
	cf = b.fig("cpu", "hydration: CPU seconds per GiB of disk (daemon vs cp; sync)", "s/GiB", "cp; sync", false, "")
	cf.ours = append(cf.ours, hydCPU)
	cf.peer = append(cf.peer, cpCPU)
	hf := b.fig("nbd", "hydration (instant restore, unlimited), both synced", "MB/s", "cp; sync", true, "≥ 0.9×")
	hf.ours = append(hf.ours, hyd)
	hf.peer = append(hf.peer, mbps(b.size, d))

	if os.Geteuid() == 0 {
		b.fuseFigures(a, dir)
	}
}
