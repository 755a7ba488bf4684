// Command catalogbench measures what requests cost as the catalog grows
// (make bench-catalog): it builds catalogs of several sizes directly
// through the catalog package (tiny backups of many servers in several
// projects, a job per backup), runs the real daemon on each, and times
// the CLI as a user runs it: p50 and p99 of `backup show NAME`, `backup
// ls --server S`, a project token's `backup ls`, `status`, FUSE `ls -l`
// of a server and `ls -R` of a project, and 20 clients listing at once;
// and the API's latency for a show and a project token's listing
// without the CLI process.
// It also measures GC's peak heap per million blocks. Every figure is
// the median over -runs runs; the machine may be shared and noisy.
//
// It uses only catalog and blockstore APIs that existed before the
// indexes, so that the same program measures an older csbs (then the
// first start of the new one builds the indexes, which it times too).
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
)

func main() {
	csbs := flag.String("csbs", "./csbs", "the csbs binary to measure")
	sizes := flag.String("sizes", "0,1000,10000,50000", "catalog sizes (backups) to measure; 0 is the empty floor")
	runs := flag.Int("runs", 3, "runs per figure; the median is reported")
	work := flag.String("work", "", "work dir (default: a new dir under /var/tmp)")
	gcBlocks := flag.Int("gc-blocks", 1<<20, "blocks in the GC memory measurement (0: skip)")
	fuseTimeout := flag.Duration("fuse-timeout", 10*time.Minute, "give up on a FUSE walk after this long")
	out := flag.String("out", "bench/catalog-results.md", "write the table here too")
	flag.Parse()
	csbsPath, err := filepath.Abs(*csbs)
	if err != nil {
		log.Fatal(err)
	}
	dir := *work
	if dir == "" {
		if dir, err = os.MkdirTemp("/var/tmp", "csbs-catalogbench."); err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	var results []*result
	for _, f := range strings.Split(*sizes, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			log.Fatalf("-sizes: %v", err)
		}
		r := measure(csbsPath, filepath.Join(dir, fmt.Sprintf("n%d", n)), n, *runs, *fuseTimeout)
		results = append(results, r)
		fmt.Fprint(os.Stderr, table(results, ""))
	}
	gc := ""
	if *gcBlocks > 0 {
		gc = gcFigures(dir, *gcBlocks, *runs)
	}
	t := table(results, gc)
	fmt.Print(t)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(t), 0o644); err != nil {
			log.Print(err)
		}
	}
}

// order lists the figures in table order.
func order() []string {
	return []string{
		"backup show NAME", "backup ls --server S", "project token: backup ls (2 backups)", "status --json",
		"API: GET /v1/backups/NAME", "API: project token GET /v1/backups",
		"FUSE ls -l of a server", "backup ls --json of a project", "FUSE ls -R of that project",
		"FUSE ls -R again (warm)", "20 clients: backup ls --server S", "daemon start (first)", "daemon restart",
	}
}

type result struct {
	n       int
	p50     map[string][]time.Duration
	p99     map[string][]time.Duration
	entries int // FUSE entries of the project walked
	project int // backups of that project
}

func (r *result) add(name string, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	r.p50[name] = append(r.p50[name], samples[len(samples)/2])
	r.p99[name] = append(r.p99[name], samples[min(len(samples)-1, len(samples)*99/100)])
}

func median(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.0f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func table(rs []*result, gc string) string {
	var b strings.Builder
	b.WriteString("| p50 / p99 (median of runs) |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %d backups |", r.n)
	}
	b.WriteString("\n|---|")
	for range rs {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, name := range order() {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range rs {
			if len(r.p50[name]) == 0 {
				b.WriteString(" - |")
				continue
			}
			fmt.Fprintf(&b, " %s / %s |", ms(median(r.p50[name])), ms(median(r.p99[name])))
		}
		b.WriteString("\n")
	}
	b.WriteString("| (project walked: backups / FUSE entries) |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %d / %d |", r.project, r.entries)
	}
	b.WriteString("\n")
	if gc != "" {
		b.WriteString("\n" + gc + "\n")
	}
	return b.String()
}

// projectShare is a project of the catalog and its share of the
// backups; "tiny" has 2 backups whose token lists them.
type projectShare struct {
	name  string
	share float64
}

func shape() []projectShare {
	return []projectShare{{"p0", 0.5}, {"p1", 0.25}, {"p2", 0.15}, {"p3", 0.10}, {"tiny", 0}}
}

const backupsPerServer = 10

type built struct {
	names     []string // backup names in p0
	servers   []string // server names in p0
	tinyToken string
	project   int // backups in p1
}

// build writes the catalog of n backups straight into a new store.
func build(dataDir string, n int) built {
	s, err := blockstore.Open(filepath.Join(dataDir, "store"), blockstore.Options{BlockSize: 64 << 10})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	cat := catalog.New(s.KV(), catalog.Options{})
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var out built
	var batch []func(tx *catalog.Txn) error
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := cat.Update(func(tx *catalog.Txn) error {
			for _, f := range batch {
				if err := f(tx); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			log.Fatal(err)
		}
		batch = batch[:0]
	}
	put := func(f func(tx *catalog.Txn) error) {
		batch = append(batch, f)
		if len(batch) >= 400 {
			flush()
		}
	}
	seq := 0
	for _, ps := range shape() {
		var p catalog.Project
		if err := cat.Update(func(tx *catalog.Txn) (err error) { p, err = tx.CreateProject(ps.name, base); return err }); err != nil {
			log.Fatal(err)
		}
		count := max(1, int(float64(n)*ps.share)) // the floor has a backup too
		if ps.name == "tiny" {
			count = 2
			if err := cat.Update(func(tx *catalog.Txn) (err error) {
				_, out.tinyToken, err = tx.CreateToken(p.ID, "bench", base)
				return err
			}); err != nil {
				log.Fatal(err)
			}
		}
		if ps.name == "p1" {
			out.project = count
		}
		nservers := max(1, (count+backupsPerServer-1)/backupsPerServer)
		servers := make([]catalog.Server, nservers)
		for i := range servers {
			servers[i] = catalog.Server{ID: catalog.NewID(catalog.KindServer), Project: p.ID, Name: fmt.Sprintf("%s-web%05d", ps.name, i),
				AZ: "local-1a", Created: base, Disks: []catalog.Disk{{Name: "vda", Source: "/dev/null", Size: 1 << 20, ByAdmin: true}}}
			sv := servers[i]
			put(func(tx *catalog.Txn) error { return tx.PutServer(sv) })
			if ps.name == "p0" {
				out.servers = append(out.servers, sv.Name)
			}
		}
		for i := range count {
			seq++
			sv := servers[i%nservers]
			created := base.Add(time.Duration(seq) * time.Minute)
			b := catalog.Backup{ID: catalog.NewID(catalog.KindBackup), Project: p.ID, ServerID: sv.ID, ServerName: sv.Name,
				Name: fmt.Sprintf("bk%06d", i), Created: created, Status: catalog.StatusAvailable, Type: catalog.TypeEnhanced,
				Trigger: catalog.TriggerManual, Full: true, TypeReason: "bench",
				Disks: []catalog.BackupDisk{{Name: "vda", MapID: "00000000000000000000000000000000", Size: 1 << 20, NewBytes: 4096, Blocks: 1}}}
			j := catalog.Job{ID: catalog.NewID(catalog.KindJob), Project: p.ID, Kind: catalog.JobBackup, State: catalog.JobSucceeded,
				Created: created, Started: created, Ended: created.Add(time.Second), ServerID: sv.ID, BackupID: b.ID, Trigger: catalog.TriggerManual}
			put(func(tx *catalog.Txn) error {
				if err := tx.PutBackup(b); err != nil {
					return err
				}
				return tx.PutJob(j)
			})
			if ps.name == "p0" {
				out.names = append(out.names, b.Name)
			}
		}
		flush()
	}
	return out
}

type daemon struct {
	cmd  *exec.Cmd
	csbs string
	dir  string
	log  *os.File
}

func start(csbs, dir string) (*daemon, time.Duration) {
	lf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		log.Fatal(err)
	}
	d := &daemon{csbs: csbs, dir: dir, log: lf}
	begin := time.Now()
	d.cmd = exec.Command(csbs, "--data-dir", filepath.Join(dir, "data"), "serve")
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	if err := d.cmd.Start(); err != nil {
		log.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := d.cli(nil, "status"); err == nil {
			return d, time.Since(begin)
		}
		if i > 6000 {
			log.Fatalf("daemon in %s did not start; see %s", dir, lf.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(os.Interrupt)
	_ = d.cmd.Wait()
	d.log.Close()
}

// cli runs the CLI and returns its wall time.
func (d *daemon) cli(env []string, args ...string) (time.Duration, error) {
	cmd := exec.Command(d.csbs, append([]string{"--data-dir", filepath.Join(d.dir, "data")}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = io.Discard
	var stderr strings.Builder
	cmd.Stderr = &stderr
	begin := time.Now()
	err := cmd.Run()
	took := time.Since(begin)
	if err != nil {
		return took, fmt.Errorf("csbs %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return took, nil
}

func (d *daemon) must(env []string, args ...string) time.Duration {
	t, err := d.cli(env, args...)
	if err != nil {
		log.Fatal(err)
	}
	return t
}

func timed(ctx context.Context, name string, args ...string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = io.Discard
	begin := time.Now()
	err := cmd.Run()
	return time.Since(begin), err
}

func measure(csbs, dir string, n, runs int, fuseTimeout time.Duration) *result {
	r := &result{n: n, p50: map[string][]time.Duration{}, p99: map[string][]time.Duration{}}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		log.Fatal(err)
	}
	begin := time.Now()
	b := build(filepath.Join(dir, "data"), n)
	fmt.Fprintf(os.Stderr, "%d backups: catalog built in %s\n", n, time.Since(begin).Round(time.Millisecond))
	r.project = b.project
	// The first start of a csbs with indexes builds them (the catalog
	// was written without the marker, as an older csbs leaves it).
	d, took := start(csbs, dir)
	r.add("daemon start (first)", []time.Duration{took})
	d.stop()
	d, took = start(csbs, dir)
	defer d.stop()
	r.add("daemon restart", []time.Duration{took})
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	pick := func(v []string) string {
		if len(v) == 0 {
			return "none"
		}
		return v[rng.IntN(len(v))]
	}
	p0 := []string{"--project", "p0"}
	mnt := filepath.Join(dir, "mnt")
	for run := range runs {
		var show, server, tiny, status []time.Duration
		for range 40 {
			if len(b.names) > 0 {
				show = append(show, d.must(nil, append(p0, "backup", "show", pick(b.names), "--json")...))
			}
			server = append(server, d.must(nil, append(p0, "backup", "ls", "--server", pick(b.servers), "--json")...))
			tiny = append(tiny, d.must([]string{"CSBS_TOKEN=" + b.tinyToken}, "backup", "ls", "--json"))
			status = append(status, d.must(nil, append(p0, "status", "--json")...))
		}
		r.add("backup show NAME", show)
		r.add("backup ls --server S", server)
		r.add("project token: backup ls (2 backups)", tiny)
		r.add("status --json", status)

		// The same through the API without a CLI process: the daemon's
		// own latency, token check included.
		secret, err := os.ReadFile(filepath.Join(dir, "data", "admin.token"))
		if err != nil {
			log.Fatal(err)
		}
		admin := api.NewUnixClient(filepath.Join(dir, "data", "csbs.sock"), strings.TrimSpace(string(secret)))
		admin.Project = "p0"
		tinyCl := api.NewUnixClient(filepath.Join(dir, "data", "csbs.sock"), b.tinyToken)
		var apiShow, apiTiny []time.Duration
		for range 200 {
			var v, vs any
			begin := time.Now()
			if err := admin.Do(context.Background(), "GET", "/v1/backups/"+pick(b.names), nil, nil, &v); err != nil {
				log.Fatal(err)
			}
			apiShow = append(apiShow, time.Since(begin))
			begin = time.Now()
			if err := tinyCl.Do(context.Background(), "GET", "/v1/backups", nil, nil, &vs); err != nil {
				log.Fatal(err)
			}
			apiTiny = append(apiTiny, time.Since(begin))
		}
		r.add("API: GET /v1/backups/NAME", apiShow)
		r.add("API: project token GET /v1/backups", apiTiny)

		var list []time.Duration
		for range 3 {
			list = append(list, d.must(nil, "--project", "p1", "backup", "ls", "--json"))
		}
		r.add("backup ls --json of a project", list)

		var conc []time.Duration
		var mu sync.Mutex
		var wg sync.WaitGroup
		for c := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lr := rand.New(rand.NewPCG(uint64(c), uint64(run)))
				for range 5 {
					s := "none"
					if len(b.servers) > 0 {
						s = b.servers[lr.IntN(len(b.servers))]
					}
					t := d.must(nil, append(p0, "backup", "ls", "--server", s, "--json")...)
					mu.Lock()
					conc = append(conc, t)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		r.add("20 clients: backup ls --server S", conc)

		// FUSE on a fresh mount each run: nothing cached, in the kernel
		// or the daemon.
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			log.Fatal(err)
		}
		d.must(nil, "--project", "p0", "mount", mnt)
		var lsl []time.Duration
		for range 20 {
			t, err := timed(context.Background(), "ls", "-l", filepath.Join(mnt, "p0", pick(b.servers)))
			if err != nil && n > 0 {
				log.Fatalf("ls -l: %v", err)
			}
			lsl = append(lsl, t)
		}
		r.add("FUSE ls -l of a server", lsl)
		d.must(nil, "--project", "p0", "umount", mnt)
		d.must(nil, "--project", "p1", "mount", mnt)
		ctx, cancel := context.WithTimeout(context.Background(), fuseTimeout)
		t, err := timed(ctx, "ls", "-R", filepath.Join(mnt, "p1"))
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%d backups: ls -R: %v (after %s)\n", n, err, t.Round(time.Second))
			t = fuseTimeout
		}
		r.add("FUSE ls -R of that project", []time.Duration{t})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), fuseTimeout)
			t, err = timed(ctx, "ls", "-R", filepath.Join(mnt, "p1"))
			cancel()
			if err != nil {
				t = fuseTimeout
			}
			r.add("FUSE ls -R again (warm)", []time.Duration{t})
		}
		if run == 0 && err == nil {
			r.entries = countEntries(filepath.Join(mnt, "p1"))
		}
		if _, err := d.cli(nil, "--project", "p1", "umount", mnt); err != nil {
			// A walk cut short may leave the mount busy for a moment.
			time.Sleep(time.Second)
			d.must(nil, "--project", "p1", "umount", mnt)
		}
		fmt.Fprintf(os.Stderr, "%d backups: run %d done\n", n, run+1)
	}
	return r
}

func countEntries(root string) int {
	n := 0
	_ = filepath.WalkDir(root, func(string, os.DirEntry, error) error { n++; return nil })
	return n - 1
}

// genSource is a disk of distinct, highly compressible blocks.
type genSource struct {
	blocks, size int64
}

func (g genSource) Size() int64 { return g.blocks * g.size }

func (g genSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= g.Size() {
		return 0, io.EOF
	}
	n := min(int64(len(p)), g.Size()-off)
	clear(p[:n])
	for b := off / g.size; b*g.size < off+n; b++ {
		at := b*g.size - off
		if at >= 0 && at+8 <= n {
			binary.LittleEndian.PutUint64(p[at:], uint64(b)+1)
		}
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// gcFigures measures GC at blocks/4 and blocks live blocks (the median
// of runs each) and reports both and the slope between them: what each
// further block costs, which is what grows with the store.
func gcFigures(dir string, blocks, runs int) string {
	medianOf := func(n int, name string) (float64, blockstore.GCStats) {
		var vs []float64
		var st blockstore.GCStats
		for i := range max(runs, 1) {
			v, s := gcMemory(filepath.Join(dir, fmt.Sprintf("%s-%d", name, i)), n)
			vs, st = append(vs, v), s
		}
		slices.Sort(vs)
		return vs[len(vs)/2], st
	}
	small, smallSt := medianOf(blocks/4, "gc-small")
	large, largeSt := medianOf(blocks, "gc-large")
	perTiB := float64(int64(1) << 40 / (64 << 10)) // blocks in a TiB at 64 KiB
	slope := max(large-small, 0) / float64(blocks-blocks/4)
	line := func(n int, grew float64, st blockstore.GCStats) string {
		return fmt.Sprintf("- GC over %d live blocks: peak live heap %.1f MiB above the start, mark set %.1f MiB, took %s\n",
			n, grew/(1<<20), float64(st.MarkBytes)/(1<<20), st.Duration.Round(time.Millisecond))
	}
	return line(blocks/4, small, smallSt) + line(blocks, large, largeSt) +
		fmt.Sprintf("- GC heap per further block: %.1f bytes = %.2f MiB per million blocks = %.1f MiB per TiB of unique data at 64 KiB blocks (mark set alone: %.1f MiB per TiB)\n",
			slope, slope*1e6/(1<<20), slope*perTiB/(1<<20), float64(largeSt.MarkBytes)/float64(blocks)*perTiB/(1<<20))
}

// gcMemory stores blocks distinct blocks and returns GC's peak live
// heap above what the process held before it: the live heap measured by
// each Go garbage collection during the run (with GOGC at 10 so that
// they come often), so garbage not yet collected does not count.
func gcMemory(dir string, blocks int) (float64, blockstore.GCStats) {
	s, err := blockstore.Open(dir, blockstore.Options{BlockSize: 4096})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	p, err := s.Ingest(ctx, genSource{blocks: int64(blocks), size: 4096}, blockstore.IngestOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Commit(ctx, []*blockstore.PendingMap{p}, nil); err != nil {
		log.Fatal(err)
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	live := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	old := debug.SetGCPercent(10)
	defer debug.SetGCPercent(old)
	runtime.GC()
	base := live()
	var peak uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, live())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	st, err := s.GC(ctx)
	close(stop)
	<-done
	if err != nil {
		log.Fatal(err)
	}
	return float64(peak) - float64(base), st
}
