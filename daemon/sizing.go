package daemon

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/config"
)

// sizing is what the daemon derived from the machine and the config for
// the read path: shown by csbs status and logged at start.
type sizing struct {
	Workers       int
	CPUs          int   // what the process may use (Oversubscribe's count)
	Procs         int   // GOMAXPROCS at start
	MemoryBytes   int64 // the machine's memory (or the cgroup's limit)
	CacheBytes    int64
	InflightBytes int64
}

func sizeFor(cfg config.Store, cpus int) sizing {
	procs := runtime.GOMAXPROCS(0)
	if cpus <= 0 {
		cpus = procs
	}
	workers := cfg.Workers
	if workers <= 0 {
		workers = procs
	}
	mem := machineMemory()
	return sizing{
		Workers: workers, CPUs: cpus, Procs: procs, MemoryBytes: mem,
		CacheBytes: cfg.CacheBytes(mem), InflightBytes: cfg.InflightBytes(workers),
	}
}

// maxExtraProcs bounds how many Ps Oversubscribe adds beyond the CPUs.
const maxExtraProcs = 16

// procsFor is the GOMAXPROCS the daemon runs with on cpus CPUs: one P
// per CPU for the work that computes, plus as many (up to maxExtraProcs)
// for goroutines that sit in blocking system calls.
func procsFor(cpus int) int {
	return max(1, cpus) + min(max(1, cpus), maxExtraProcs)
}

// Oversubscribe raises GOMAXPROCS above the CPUs the process may use
// (the runtime's default, which follows the cgroup's CPU limit) to
// procsFor of them, unless GOMAXPROCS is set in the environment, and
// returns both figures. csbs serve calls it once, before New.
//
// A goroutine in a blocking system call keeps its P until the runtime's
// monitor takes it back, and the daemon makes many: go-fuse's readers
// wait on /dev/fuse, workers pread packs and pwrite restore targets, NBD
// replies go out with writev. With one P per CPU a CPU idles meanwhile
// while decode work waits for a P. On 2 CPUs (make bench's 2 GiB image,
// median of 3) a cold FUSE read went from 1140 to 1310 MB/s with 4 Ps
// and the workers that follow them, a normal restore +10%, NBD
// sequential reads +3%.
func Oversubscribe() (cpus, procs int) {
	cpus = runtime.GOMAXPROCS(0)
	// The runtime ignores a value that is not a positive number; so
	// does this.
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && n > 0 {
		return cpus, cpus
	}
	procs = procsFor(cpus)
	runtime.GOMAXPROCS(procs)
	return cpus, procs
}

// heapSlack is what the daemon's heap holds besides the block cache and
// the data in flight: Badger's memtables (2 × 32 MiB while backups
// write), its block and index caches (48 MiB), codecs, FUSE and API
// buffers.
const heapSlack = 160 << 20

// limitMemory sets the Go runtime's soft memory limit to what the
// daemon is sized for, unless GOMEMLIMIT says otherwise. Without it the
// collector lets the heap grow to twice what is live, so a full block
// cache would cost double its size in anonymous memory at peaks.
func limitMemory(size sizing) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1)
	}
	limit := size.CacheBytes + size.InflightBytes + heapSlack
	debug.SetMemoryLimit(limit)
	return limit
}

// machineMemory is the physical memory, or the memory limit of the
// daemon's cgroup when that is lower (a container or a systemd slice).
func machineMemory() int64 {
	var si unix.Sysinfo_t
	mem := int64(1 << 30)
	if unix.Sysinfo(&si) == nil {
		mem = int64(si.Totalram) * int64(si.Unit)
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			mem = min(mem, v)
		}
	}
	return mem
}

// idleTrimAfter is how long the block cache must go unused before an
// idle daemon gives its memory back.
const idleTrimAfter = 2 * time.Minute

// trimWhenIdle empties the block cache, and returns the freed memory to
// the system, once no block was read for idleTrimAfter: an idle
// appliance keeps only its baseline memory, whatever the cache's size.
// (The attached exports' read cache files stay: their pages are the
// kernel's to drop.)
func (d *Daemon) trimWhenIdle(ctx context.Context) {
	t := time.NewTicker(idleTrimAfter / 4)
	defer t.Stop()
	var last blockstore.CacheStats
	lastUse := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cs := d.store.CacheStats()
		if cs.Hits != last.Hits || cs.Misses != last.Misses {
			last, lastUse = cs, time.Now()
			continue
		}
		if cs.Bytes > 0 && time.Since(lastUse) >= idleTrimAfter {
			d.store.TrimCache()
			debug.FreeOSMemory()
			d.log.Debug("idle: block cache emptied", "bytes", cs.Bytes)
		}
	}
}
