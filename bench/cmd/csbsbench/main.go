// Command csbsbench measures csbs against its peers on the same images in
// the same run and prints one table of medians and ratios (see bench/run.sh).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zeebo/blake3"

	"csbs/internal/radosgw"
)

type figure struct {
	group, name, unit string
	ours, peer        []float64
	peerName          string
	higherIsBetter    bool
	target            string
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

type bench struct {
	work, image, csbs string
	reps              int
	codec             string
	figs              []*figure
	size              int64
}

func (b *bench) fig(group, name, unit, peer string, higher bool, target string) *figure {
	for _, f := range b.figs {
		if f.group == group && f.name == name {
			return f
		}
	}
	f := &figure{group: group, name: name, unit: unit, peerName: peer, higherIsBetter: higher, target: target}
	b.figs = append(b.figs, f)
	return f
}

func run(name string, args ...string) (time.Duration, string) {
	start := time.Now()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		log.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return time.Since(start), out.String()
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

// duBytes is the space files under dir take on disk (allocated blocks:
// Badger preallocates its value-log and memtable files, so their apparent
// size says little).
func duBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// rssSampler records a process's peak anonymous memory (heap, stacks,
// Badger's memtables) and peak total RSS, which also counts mapped file
// pages the kernel can drop at will.
type rssSampler struct {
	stop            chan struct{}
	done            chan struct{}
	peakAnon, total int64
}

func sampleRSS(pid int) *rssSampler {
	r := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			anon, total := procStatus(pid, "RssAnon:"), procStatus(pid, "VmRSS:")
			r.peakAnon, r.total = max(r.peakAnon, anon), max(r.total, total)
			select {
			case <-r.stop:
				return
			case <-t.C:
			}
		}
	}()
	return r
}

func (r *rssSampler) finish() { close(r.stop); <-r.done }

func copyFile(dst, src string) {
	if _, out := run("cp", "--sparse=always", src, dst); out != "" {
		log.Print(out)
	}
}

// mutate changes 1% of the image's 64 KiB blocks: a 4 KiB write of new
// data in each, like scattered file-system writes.
func mutate(path string, fraction float64, seed uint64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	blocks := fi.Size() / (64 << 10)
	r := rand.New(rand.NewPCG(seed, 1))
	buf := make([]byte, 4096)
	for range int(float64(blocks) * fraction) {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		off := r.Int64N(blocks)*(64<<10) + r.Int64N(16)*4096
		if _, err := f.WriteAt(buf, off); err != nil {
			log.Fatal(err)
		}
	}
}

func main() {
	var b bench
	out := flag.String("out", "", "write the table as markdown here")
	flag.StringVar(&b.work, "work", "", "work dir")
	flag.StringVar(&b.image, "image", "", "ext4 image")
	flag.StringVar(&b.csbs, "csbs", "csbs", "csbs binary")
	flag.IntVar(&b.reps, "reps", 3, "runs per figure (median reported)")
	flag.StringVar(&b.codec, "codec", "zstd", "csbs store compression (s2, zstd)")
	only := flag.String("only", "ceilings,store,nbd", "groups to run, comma-separated: ceilings, store, nbd, replication")
	s3 := flag.Bool("s3", false, "measure the s3 backend on a local Ceph RADOS Gateway instead (make bench-s3)")
	flag.Parse()
	groups := map[string]bool{}
	for _, g := range strings.Split(*only, ",") {
		groups[strings.TrimSpace(g)] = true
	}
	fi, err := os.Stat(b.image)
	if err != nil {
		log.Fatal(err)
	}
	b.size = fi.Size()
	changed := filepath.Join(b.work, "changed.img")
	if _, err := os.Stat(changed); err != nil {
		copyFile(changed, b.image)
		mutate(changed, 0.01, 42)
	}
	var gw *radosgw.Cluster
	if *s3 {
		log.Print("starting a single-node Ceph cluster with a RADOS Gateway ...")
		if gw, err = radosgw.Launch(8 << 30); err != nil {
			log.Fatal(err)
		}
		defer gw.Close()
	}
	for rep := range b.reps {
		log.Printf("rep %d/%d", rep+1, b.reps)
		if gw != nil {
			b.s3Figures(gw, rep)
			continue
		}
		if groups["ceilings"] {
			b.ceilings()
		}
		if groups["store"] {
			b.store(changed)
		}
		if groups["nbd"] {
			b.nbdFigures()
		}
		if groups["replication"] {
			b.replication(changed)
		}
	}
	b.print(os.Stdout)
	if *out != "" {
		var md bytes.Buffer
		b.print(&md)
		if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func (b *bench) ceilings() {
	run("sh", "-c", "cat "+b.image+" > /dev/null") // bring it into the page cache
	d, _ := run("sh", "-c", "cat "+b.image+" > /dev/null")
	cat := b.fig("ceilings", "cat image (page cache)", "MB/s", "", true, "")
	cat.ours = append(cat.ours, mbps(b.size, d))
	d, _ = run("b3sum", "--num-threads", strconv.Itoa(runtime.NumCPU()), b.image)
	f := b.fig("ceilings", "BLAKE3: our 64 KiB block hashing vs b3sum", "MB/s", "b3sum", true, "")
	f.peer = append(f.peer, mbps(b.size, d))
	f.ours = append(f.ours, hashSpeed(b.image))
}

// hashSpeed hashes the image in 64 KiB blocks on every core, as ingest does.
func hashSpeed(path string) float64 {
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	var wg sync.WaitGroup
	workers := runtime.NumCPU()
	chunk := int64(1 << 20)
	var next int64
	var mu sync.Mutex
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for {
				mu.Lock()
				off := next
				next += chunk
				mu.Unlock()
				n, _ := f.ReadAt(buf, off)
				if n <= 0 {
					return
				}
				for i := 0; i+65536 <= n; i += 65536 {
					blake3.Sum256(buf[i : i+65536])
				}
			}
		}()
	}
	wg.Wait()
	return mbps(fi(path), time.Since(start))
}

func fi(path string) int64 {
	s, err := os.Stat(path)
	if err != nil {
		log.Fatal(err)
	}
	return s.Size()
}

// store runs one backup / incremental / restore cycle of csbs and restic
// on the same disk file.
func (b *bench) store(changed string) {
	dir, err := os.MkdirTemp(b.work, "cycle-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	disk := filepath.Join(dir, "disk.img")

	// csbs: a real daemon, driven by the CLI.
	copyFile(disk, b.image)
	cfg := filepath.Join(dir, "csbs.toml")
	os.WriteFile(cfg, []byte("data_dir = \"csbs\"\n[log]\nlevel = \"warn\"\n[store]\ncompression = \""+b.codec+"\"\n"), 0o600)
	var daemon *exec.Cmd
	var rss *rssSampler
	start := func() {
		daemon = exec.Command(b.csbs, "serve", "--config", cfg)
		daemon.Stderr = os.Stderr
		if err := daemon.Start(); err != nil {
			log.Fatal(err)
		}
		for i := 0; i < 200; i++ {
			if exec.Command(b.csbs, "--config", cfg, "status").Run() == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		rss = sampleRSS(daemon.Process.Pid)
	}
	// stop ends the daemon; Badger keeps preallocated files while open, so
	// the store's size counts only after this.
	stop := func() {
		rss.finish()
		daemon.Process.Signal(syscall.SIGTERM)
		daemon.Wait()
		daemon = nil
	}
	defer func() {
		if daemon != nil {
			stop()
		}
	}()
	start()
	time.Sleep(time.Second)
	idle := procStatus(daemon.Process.Pid, "RssAnon:")
	cli := func(args ...string) (time.Duration, string) {
		return run(b.csbs, append([]string{"--config", cfg}, args...)...)
	}
	cli("server", "add", "--name", "bench", "--disk", "vda="+disk)
	d, _ := cli("backup", "create", "bench", "--wait", "--name", "first")
	backupOurs := mbps(b.size, d)
	stop()
	peakAnon, peakTotal := rss.peakAnon, rss.total
	storeOurs := duBytes(filepath.Join(dir, "csbs", "store"))
	start()
	copyFile(disk, changed)
	d, _ = cli("backup", "create", "bench", "--wait", "--name", "second")
	incrOurs := mbps(b.size, d)
	target := filepath.Join(dir, "restored.img")
	cpu0 := cpuOf(daemon.Process.Pid)
	d, _ = cli("restore", "start", "second", "--disk", "vda="+target, "--wait")
	restoreOurs := mbps(b.size, d)
	restoreCPU := (cpuOf(daemon.Process.Pid) - cpu0) / gib(b.size)
	stop()
	peakAnon, peakTotal = max(peakAnon, rss.peakAnon), max(peakTotal, rss.total)
	storeOurs2 := duBytes(filepath.Join(dir, "csbs", "store"))
	if a, c := sum(target), sum(changed); a != c {
		log.Fatalf("csbs restore differs from the image: %s %s", a, c)
	}
	os.Remove(target)
	// The same bytes copied by cp, synced like the restore is.
	cpu0 = childrenCPU()
	d, _ = run("sh", "-c", "cp '"+changed+"' '"+target+"' && sync '"+target+"'")
	cpSynced := mbps(b.size, d)
	cpCPU := (childrenCPU() - cpu0) / gib(b.size)
	os.Remove(target)

	// restic on the same file path, repository in the same dir.
	copyFile(disk, b.image)
	repo := filepath.Join(dir, "restic")
	os.Setenv("RESTIC_PASSWORD", "bench")
	os.Setenv("RESTIC_REPOSITORY", repo)
	run("restic", "init", "--repository-version", "2")
	d, _ = run("restic", "backup", disk)
	backupRestic := mbps(b.size, d)
	repoSize := duBytes(repo)
	copyFile(disk, changed)
	d, _ = run("restic", "backup", disk)
	incrRestic := mbps(b.size, d)
	repoSize2 := duBytes(repo)
	rdir := filepath.Join(dir, "restic-out")
	d, _ = run("restic", "restore", "latest", "--target", rdir)
	restoreRestic := mbps(b.size, d)
	os.RemoveAll(rdir)

	add := func(name, unit string, ours, peer float64, higher bool, target string) {
		f := b.fig("store", name, unit, "restic", higher, target)
		f.ours = append(f.ours, ours)
		f.peer = append(f.peer, peer)
	}
	add("backup of new data", "MB/s", backupOurs, backupRestic, true, "≥ 2×")
	add("incremental backup (1% changed)", "MB/s", incrOurs, incrRestic, true, "≥ 3×")
	add("restore", "MB/s", restoreOurs, restoreRestic, true, "≥ 1.5×")
	f := b.fig("store", "normal restore vs cp, both synced to disk", "MB/s", "cp; sync", true, "≥ 0.9×")
	f.ours = append(f.ours, restoreOurs)
	f.peer = append(f.peer, cpSynced)
	f = b.fig("cpu", "normal restore: CPU seconds per GiB of disk (daemon vs cp; sync)", "s/GiB", "cp; sync", false, "")
	f.ours = append(f.ours, restoreCPU)
	f.peer = append(f.peer, cpCPU)
	add("store size after first backup (allocated, daemon stopped)", "MiB", float64(storeOurs)/(1<<20), float64(repoSize)/(1<<20), false, "≤ 1.1×")
	add("store size after both backups (allocated, daemon stopped)", "MiB", float64(storeOurs2)/(1<<20), float64(repoSize2)/(1<<20), false, "≤ 1.1×")
	f = b.fig("memory", "idle daemon anonymous memory (RssAnon), default config", "MiB", "", false, "≤ 256 MiB")
	f.ours = append(f.ours, float64(idle)/(1<<10))
	f = b.fig("memory", "daemon peak anonymous memory, backups and restore", "MiB", "", false, "-")
	f.ours = append(f.ours, float64(peakAnon)/(1<<10))
	f = b.fig("memory", "daemon peak RSS incl. mapped store files", "MiB", "", false, "")
	f.ours = append(f.ours, float64(peakTotal)/(1<<10))
}

func sum(path string) string {
	_, out := run("b3sum", "--no-names", path)
	return strings.TrimSpace(out)
}

// procStatus reads one KiB figure from /proc/PID/status.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			v, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return v
		}
	}
	return 0
}

func (b *bench) print(w io.Writer) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "# csbs benchmark\n\n%s, %d CPUs, %s; image %d MiB ext4 of real files; csbs compression %s; median of %d runs; %s\n\n",
		host, runtime.NumCPU(), runtime.Version(), b.size>>20, b.codec, b.reps, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintln(w, "| group | figure | csbs | peer | peer figure | ratio | target |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, f := range b.figs {
		ours := median(f.ours)
		peer, ratio := "-", "-"
		if len(f.peer) > 0 {
			p := median(f.peer)
			peer = num(p) + " " + f.unit
			if p > 0 {
				ratio = fmt.Sprintf("%.2f×", ours/p)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s %s | %s | %s | %s | %s |\n", f.group, f.name, num(ours), f.unit, orDash(f.peerName), peer, ratio, orDash(f.target))
	}
	raw, _ := json.Marshal(b.figsJSON())
	fmt.Fprintf(w, "\n<!-- raw runs: %s -->\n", raw)
}

func (b *bench) figsJSON() map[string]any {
	m := map[string]any{}
	for _, f := range b.figs {
		m[f.group+"/"+f.name] = map[string]any{"ours": f.ours, "peer": f.peer}
	}
	return m
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cpuOf is the CPU time (user + system) process pid has used so far, in
// seconds. Figures of CPU per GiB do not depend on how busy the machine
// is, which the throughput figures of a shared machine do.
func cpuOf(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ
}

// childrenCPU is the CPU time of the children this process has waited
// for (and theirs), in seconds.
func childrenCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// gib is bytes in GiB.
func gib(n int64) float64 { return float64(n) / (1 << 30) }

// num prints a figure with one decimal, or two below 10.
func num(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
