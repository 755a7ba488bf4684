// Command csbsscale measures how csbs scales with cores (make
// bench-scale): for GOMAXPROCS 1, 2, 4 … nproc it runs a real daemon with
// that many Go processors on a generated image and measures backup,
// normal restore, hydration, NBD sequential reads (its own client: 4
// connections × 16 requests of 256 KiB in flight) and NBD random 4 KiB
// reads at queue depth 32, beside the same access patterns with pread on
// the raw image as the ceiling, and prints each figure's speedup over
// GOMAXPROCS=1. It needs nothing but the csbs binary and itself: no
// peers, no mkfs, no root. Random reads use a pipelined client of its
// own (one connection, 32 requests always in flight, as fio's nbd engine
// keeps them), so that the figure is the server's.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"csbs/bench/internal/appliance"
	"csbs/nbd"
)

type scale struct {
	csbs, work, image string
	size              int64
	reps              int
	seconds           time.Duration
	codec             string
	// figures[name][procs] are the runs of one figure at one GOMAXPROCS.
	figures map[string]map[int][]float64
	order   []string
	units   map[string]string
}

func main() {
	var s scale
	flag.StringVar(&s.csbs, "csbs", "./csbs", "csbs binary")
	flag.StringVar(&s.work, "work", "", "work dir (default: a new dir under /var/tmp); needs ~4× the image size")
	sizeMiB := flag.Int64("size", 2048, "image size, MiB")
	flag.IntVar(&s.reps, "reps", 3, "runs per figure (the median is reported)")
	flag.DurationVar(&s.seconds, "random-time", 5*time.Second, "duration of each random-read run")
	flag.StringVar(&s.codec, "codec", "zstd", "store compression")
	procsFlag := flag.String("procs", "", "GOMAXPROCS values, comma-separated (default 1, 2, 4 … nproc)")
	out := flag.String("out", "", "also write the table as markdown here")
	flag.Parse()
	if s.work == "" {
		var err error
		if s.work, err = os.MkdirTemp("/var/tmp", "csbs-scale."); err != nil {
			log.Fatal(err)
		}
	}
	if err := os.MkdirAll(s.work, 0o755); err != nil {
		log.Fatal(err)
	}
	s.csbs, _ = filepath.Abs(s.csbs)
	s.figures, s.units = map[string]map[int][]float64{}, map[string]string{}
	procs := procList(*procsFlag)
	s.image = filepath.Join(s.work, "scale.img")
	if fi, err := os.Stat(s.image); err != nil || fi.Size() != *sizeMiB<<20 {
		log.Printf("generating a %d MiB image of files from /usr and random data in %s ...", *sizeMiB, s.image)
		if err := generate(s.image, *sizeMiB<<20); err != nil {
			log.Fatal(err)
		}
	}
	fi, err := os.Stat(s.image)
	if err != nil {
		log.Fatal(err)
	}
	s.size = fi.Size()
	for rep := range s.reps {
		for _, p := range procs {
			log.Printf("rep %d/%d, GOMAXPROCS=%d", rep+1, s.reps, p)
			s.runOnce(p, rep)
		}
	}
	var md bytes.Buffer
	s.print(io.MultiWriter(os.Stdout, &md), procs)
	if *out != "" {
		if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func procList(flagValue string) []int {
	var out []int
	if flagValue != "" {
		for _, f := range strings.Split(flagValue, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				log.Fatalf("-procs: %q is not a positive number", f)
			}
			out = append(out, n)
		}
		return out
	}
	n := runtime.NumCPU()
	for p := 1; p < n; p *= 2 {
		out = append(out, p)
	}
	return append(out, n)
}

// generate writes an image: runs of real file contents from /usr (each
// file starting on a 4 KiB boundary, as in a file system), runs of
// random data (incompressible, never deduplicated) and holes, in the
// proportion 8 : 2 : 4. Files are used once each; if /usr runs out
// before the image is full, the rest of the data is random.
func generate(path string, size int64) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	files := make(chan []byte, 16)
	go func() {
		defer close(files)
		for _, root := range []string{"/usr/share", "/usr/lib", "/usr/bin", "/usr/local", "/usr/libexec", "/usr/sbin"} {
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
					files <- b
				}
				return nil
			})
		}
	}()
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int64) []byte {
		b := make([]byte, n)
		for i := 0; i+8 <= len(b); i += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
		return b
	}
	const real, rnd, hole = 8 << 20, 2 << 20, 4 << 20
	off := int64(0)
	for off < size {
		end := min(off+real, size)
		for off < end {
			b, ok := <-files
			if !ok {
				b = random(end - off)
			}
			b = b[:min(int64(len(b)), end-off)]
			if _, err := f.WriteAt(b, off); err != nil {
				return err
			}
			off = min((off+int64(len(b))+4095)/4096*4096, end)
		}
		if n := min(int64(rnd), size-off); n > 0 {
			if _, err := f.WriteAt(random(n), off); err != nil {
				return err
			}
			off += n
		}
		off += hole
	}
	for range files { // let the walker finish
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func (s *scale) add(name, unit string, procs int, v float64) {
	if s.figures[name] == nil {
		s.figures[name] = map[int][]float64{}
		s.order = append(s.order, name)
		s.units[name] = unit
	}
	s.figures[name][procs] = append(s.figures[name][procs], v)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// runOnce measures every figure once at GOMAXPROCS=procs, with a new
// daemon and store.
func (s *scale) runOnce(procs, rep int) {
	dir, err := os.MkdirTemp(s.work, fmt.Sprintf("run-%d-", procs))
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	a, err := appliance.Start(s.csbs, dir, "[store]\ncompression = \""+s.codec+"\"\n", "GOMAXPROCS="+strconv.Itoa(procs))
	if err != nil {
		log.Fatal(err)
	}
	defer a.Stop()
	must := func(d time.Duration, out string, err error) (time.Duration, string) {
		if err != nil {
			log.Fatal(err)
		}
		return d, out
	}
	readAll(s.image) // the source in the page cache, as for the ceilings
	must(a.CLI("server", "add", "--name", "img", "--disk", "vda="+s.image))
	d, _ := must(a.CLI("backup", "create", "img", "--full", "--enable-instant-restore", "--name", "golden", "--wait"))
	s.add("backup", "MB/s", procs, mbps(s.size, d))

	target := filepath.Join(dir, "restored.img")
	d, _ = must(a.CLI("restore", "start", "golden", "--disk", "vda="+target, "--wait"))
	s.add("normal restore (synced)", "MB/s", procs, mbps(s.size, d))
	if rep == 0 && !sameFile(target, s.image) {
		log.Fatalf("GOMAXPROCS=%d: the restored image differs from the source", procs)
	}
	os.Remove(target)

	start := time.Now()
	_, out := must(a.CLI("restore", "start", "golden", "--instant", "--rate", "0", "--json", "--disk", "vda="+target))
	var r struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		log.Fatalf("restore start: %v: %s", err, out)
	}
	if err := a.WaitHydrated(context.Background(), r.ID); err != nil {
		log.Fatal(err)
	}
	s.add("hydration (synced)", "MB/s", procs, mbps(s.size, time.Since(start)))
	must(a.CLI("restore", "finish", r.ID))
	if rep == 0 && !sameFile(target, s.image) {
		log.Fatalf("GOMAXPROCS=%d: the hydrated image differs from the source", procs)
	}
	os.Remove(target)

	// Each NBD pattern on a fresh attach: a new export starts with an
	// empty read cache file, so "cold" means every block is decoded.
	attach := func() string {
		_, uri := must(a.CLI("backup", "attach", "golden", "--quiet"))
		return strings.TrimSpace(uri)
	}
	detach := func() { must(a.CLI("backup", "detach", "golden")) }
	rnd := func(uri string) float64 {
		iops, err := randomPipelined(uri, 32, s.seconds)
		if err != nil {
			log.Fatal(err)
		}
		return iops
	}
	uri := attach()
	s.add("NBD sequential, cold, 4 conns × 16 × 256 KiB", "MB/s", procs, nbdSequential(uri, s.size))
	detach()
	uri = attach()
	s.add("NBD random 4 KiB QD32, cold (decode per read)", "IOPS", procs, rnd(uri))
	// Blocks read twice are in the read cache file now.
	s.add("NBD random 4 KiB QD32, warm (read cache file)", "IOPS", procs, rnd(uri))
	detach()

	// Ceilings: the same patterns with pread on the raw image, with the
	// same number of Go processors.
	prev := runtime.GOMAXPROCS(procs)
	f, err := os.Open(s.image)
	if err != nil {
		log.Fatal(err)
	}
	s.add("ceiling: pread sequential, 64 × 256 KiB", "MB/s", procs, preadSequential(f, s.size))
	s.add("ceiling: pread random 4 KiB QD32", "IOPS", procs, randomIOPS(f, s.size, s.seconds))
	f.Close()
	runtime.GOMAXPROCS(prev)
}

func readAll(path string) {
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	io.Copy(io.Discard, f)
}

func sameFile(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil {
			return true
		}
	}
}

// nbdSequential reads the whole export over 4 connections with 16
// requests of 256 KiB in flight on each, in disk order.
func nbdSequential(uri string, size int64) float64 {
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		c, err := nbd.Dial(context.Background(), uri)
		if err != nil {
			log.Fatal(err)
		}
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 256<<10)
				for {
					off := next.Add(256<<10) - 256<<10
					if off >= size {
						return
					}
					if _, err := c.ReadAt(buf[:min(256<<10, size-off)], off); err != nil {
						log.Fatalf("NBD read at %d: %v", off, err)
					}
				}
			}()
		}
		defer c.Close()
	}
	wg.Wait()
	return mbps(size, time.Since(start))
}

// preadSequential is nbdSequential's pattern on a file: 64 readers of
// 256 KiB in disk order.
func preadSequential(f *os.File, size int64) float64 {
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				off := next.Add(256<<10) - 256<<10
				if off >= size {
					return
				}
				if _, err := f.ReadAt(buf[:min(256<<10, size-off)], off); err != nil && err != io.EOF {
					log.Fatal(err)
				}
			}
		}()
	}
	wg.Wait()
	return mbps(size, time.Since(start))
}

// randomIOPS keeps 32 reads of 4 KiB at random aligned offsets in flight
// for d and returns reads per second.
func randomIOPS(r io.ReaderAt, size int64, d time.Duration) float64 {
	var n atomic.Int64
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), uint64(start.UnixNano())))
			buf := make([]byte, 4096)
			for time.Now().Before(stop) {
				if _, err := r.ReadAt(buf, rng.Int64N(size/4096)*4096); err != nil && err != io.EOF {
					log.Fatalf("random read: %v", err)
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// spread is (max-min)/median in percent: how noisy a figure was.
func spread(v []float64) float64 {
	if len(v) < 2 || median(v) == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / median(v) * 100
}

func (s *scale) print(w io.Writer, procs []int) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "# csbs bench-scale\n\n%s, %d CPUs, %s; image %d MiB (files from /usr, random data, holes); compression %s; median of %d runs (± spread: (max-min)/median); %s\n\n",
		host, runtime.NumCPU(), runtime.Version(), s.size>>20, s.codec, s.reps, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprint(w, "| figure |")
	for _, p := range procs {
		fmt.Fprintf(w, " GOMAXPROCS=%d |", p)
	}
	fmt.Fprint(w, "\n|---|")
	for range procs {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, name := range s.order {
		fmt.Fprintf(w, "| %s |", name)
		base := median(s.figures[name][procs[0]])
		for _, p := range procs {
			runs := s.figures[name][p]
			m := median(runs)
			cell := fmt.Sprintf(" %.0f %s ±%.0f%%", m, s.units[name], spread(runs))
			if p != procs[0] && base > 0 {
				cell += fmt.Sprintf(", %.2f×", m/base)
			}
			fmt.Fprintf(w, "%s |", cell)
		}
		fmt.Fprintln(w)
	}
	raw, _ := json.Marshal(s.figures)
	fmt.Fprintf(w, "\n<!-- raw runs: %s -->\n", raw)
}
