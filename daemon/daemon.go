// Package daemon assembles the appliance: it opens the store (the daemon
// alone does; Badger's directory lock keeps a second daemon out), makes
// sure a default project and an admin token exist, and runs the job
// runner, the policy scheduler and the API listeners until its context
// ends, then shuts them down in order.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"csbs/access"
	"csbs/api"
	"csbs/blockstore"
	"csbs/blockstore/s3packs"
	"csbs/catalog"
	"csbs/config"
	"csbs/engine"
	"csbs/internal/durable"
	"csbs/maintenance"
	"csbs/metrics"
	"csbs/mounts"
	"csbs/replication"
	"csbs/restore"
	"csbs/scheduler"
)

// Options are what a caller may inject (tests use a fake clock).
type Options struct {
	Clock   scheduler.Clock
	Log     *slog.Logger
	Version string
	// CPUs the process may use, as Oversubscribe counted them before it
	// raised GOMAXPROCS (shown by csbs status); 0: GOMAXPROCS.
	CPUs int
}

// Daemon is a running appliance.
type Daemon struct {
	cfg     config.Config
	clock   scheduler.Clock
	log     *slog.Logger
	version string
	store   *blockstore.Store
	s3      *s3packs.S3Packs // nil for the local backend
	cat     *catalog.Catalog
	engine  *engine.Engine
	runner  *scheduler.Runner
	sched   *scheduler.Scheduler
	api     *api.Service
	serving *serving
	mounts  *mounts.Manager
	repl    *replication.Service
	metrics *metrics.Metrics
	maint   *maintenance.Timer
	started time.Time
	size    sizing // workers, cache and budget as sized at start
}

// AdminTokenFile is the admin token's file name inside the data dir.
const AdminTokenFile = "admin.token"

// New opens the store and prepares every component; Serve starts them.
func New(cfg config.Config, opts Options) (*Daemon, error) {
	if opts.Clock == nil {
		opts.Clock = scheduler.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	// Every path check compares absolute paths; a relative one would
	// match nothing and let a path through.
	if err := cfg.CheckAbsolute(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	if err := checkOpenSpace(cfg); err != nil {
		return nil, err
	}
	codec, err := blockstore.ParseCodec(cfg.Store.Compression)
	if err != nil {
		return nil, err
	}
	packs, s3p, err := openPacks(context.Background(), cfg, opts.Log)
	if err != nil {
		return nil, err
	}
	packSize := 0
	if s3p != nil {
		packSize = int(cfg.Store.S3.PackSize)
	}
	size := sizeFor(cfg.Store, opts.CPUs)
	store, err := blockstore.Open(cfg.StoreDir(), blockstore.Options{
		BlockSize: int(cfg.Store.BlockSize), Codec: codec, CacheBytes: size.CacheBytes, Logger: opts.Log,
		MinFree: int64(cfg.Store.MinFree), Packs: packs, PackSize: packSize,
		Workers: size.Workers, InflightBytes: size.InflightBytes,
	})
	if err != nil {
		if packs != nil {
			packs.Close()
		}
		if errors.Is(err, blockstore.ErrInUse) {
			return nil, fmt.Errorf("store %s is in use by another csbs daemon: %w", cfg.StoreDir(), err)
		}
		return nil, err
	}
	if err := recordBackend(cfg.StoreDir(), backendName(cfg)); err != nil {
		store.Close()
		return nil, err
	}
	d := &Daemon{cfg: cfg, clock: opts.Clock, log: opts.Log, version: opts.Version, store: store, s3: s3p, size: size}
	memLimit := limitMemory(size)
	d.log.Info("read path sized", "workers", size.Workers, "cpus", size.CPUs, "gomaxprocs", size.Procs, "block_cache_bytes", size.CacheBytes, "inflight_bytes", size.InflightBytes, "memory_bytes", size.MemoryBytes, "go_memory_limit", memLimit)
	d.cat = catalog.New(store.KV(), catalog.Options{Space: d.catalogSpace})
	if n, err := d.cat.EnsureIndexes(); err != nil {
		store.Close()
		return nil, err
	} else if n > 0 {
		d.log.Info("built the catalog's indexes (once, after an upgrade)", "objects", n)
	}
	if err := d.bootstrap(); err != nil {
		store.Close()
		return nil, err
	}
	d.engine = &engine.Engine{
		Store: store, Catalog: d.cat, Now: d.clock.Now, Log: d.log,
		Access: accessRules(cfg),
		VMDir:  filepath.Join(cfg.DataDir, "vm"),
	}
	d.runner = scheduler.NewRunner(d.cat, executor{d}, d.clock, d.log, cfg.Scheduler.MaxConcurrentJobs, time.Duration(cfg.Scheduler.Window))
	d.sched = scheduler.New(d.cat, store, d.runner, d.engine, d.clock, d.log)
	d.sched.Jobs = scheduler.JobRetention{
		Keep: time.Duration(cfg.Jobs.Keep), KeepFailed: time.Duration(cfg.Jobs.KeepFailed), KeepLast: cfg.Jobs.KeepLast,
	}
	d.repl = replication.New(store, d.cat, d.runner, d.clock, d.log, filepath.Join(cfg.DataDir, "replication"), cfg.Region)
	d.repl.DeleteBackup = func(ctx context.Context, b catalog.Backup) error { return d.sched.DeleteBackup(ctx, b, false) }
	d.metrics = metrics.New(d, opts.Version)
	d.maint = &maintenance.Timer{Clock: d.clock, Log: d.log, Submit: d.submitMaintenance}
	d.serving = newServing(d)
	d.mounts = mounts.NewManager(mounts.Config{
		Catalog: d.cat, Disks: disks{d}, Access: d.engine,
		DataDir: cfg.DataDir, Mountpoint: cfg.FUSE.Mountpoint, Log: d.log,
	})
	d.api = &api.Service{
		Catalog: d.cat, Runner: d.runner, Scheduler: d.sched, Engine: d.engine, Serving: d.serving, Mounts: d.mounts,
		Region: cfg.Region, AZs: cfg.AvailabilityZones, Clock: d.clock, Log: d.log, Version: opts.Version,
		Status: d.status, StoreStats: d.storeStats, Replication: d.repl,
	}
	return d, nil
}

// accessRules turns the config's host access settings into the rules
// every path check uses.
func accessRules(cfg config.Config) *access.Rules {
	grant := func(g config.Grant) access.Grant {
		return access.Grant{SourceDirs: g.SourceDirs, TargetDirs: g.TargetDirs, MountDirs: g.MountDirs, NBDHosts: g.NBDHosts}
	}
	r := &access.Rules{
		Protected:      []string{cfg.DataDir, cfg.API.Socket, cfg.NBD.Socket},
		AllowedSources: cfg.Sources.AllowedDirs,
		Global:         grant(cfg.Access.Grant),
		Projects:       map[string]access.Grant{},
	}
	for name, g := range cfg.Access.Projects {
		r.Projects[name] = grant(g)
	}
	return r
}

// checkOpenSpace refuses to open the store on a file system with less
// than half the reserve free: Badger replays its logs into new mapped
// files when it opens, which on a full disk is SIGBUS.
func checkOpenSpace(cfg config.Config) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(cfg.DataDir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", cfg.DataDir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if need := int64(cfg.Store.MinFree) / 2; free < need {
		return fmt.Errorf("store %s: %w: %d MiB free, csbs needs %d MiB (half of store.min_free) to open its store (Badger replays its logs into new files and would crash on a full disk); free space on that file system and start again",
			cfg.StoreDir(), syscall.ENOSPC, free>>20, need>>20)
	}
	return nil
}

// catalogSpace is the catalog's free-space check: a write of class
// WriteGrow keeps the whole reserve (store.min_free), one of class
// WriteRelease half of it, which still covers the memtable files Badger
// maps and the table a flush writes (see blockstore/space.go).
func (d *Daemon) catalogSpace(w catalog.WriteClass) error {
	if w == catalog.WriteGrow {
		if err := d.store.CheckSpace(0); err != nil {
			return fmt.Errorf("%w; deleting backups, csbs gc, restores and token revocation still work", err)
		}
		return nil
	}
	free, err := d.store.FreeBytes()
	if err != nil {
		return err
	}
	if floor := int64(d.cfg.Store.MinFree) / 2; free < floor {
		return fmt.Errorf("store %s: %w: %d MiB free, below %d MiB (half of store.min_free), the least csbs needs to write anything without crashing; free space on that file system or grow it",
			d.cfg.StoreDir(), syscall.ENOSPC, free>>20, floor>>20)
	}
	return nil
}

// bootstrap creates the default project and the admin token file on
// first start.
func (d *Daemon) bootstrap() error {
	now := d.clock.Now()
	err := d.cat.Update(func(tx *catalog.Txn) error {
		if _, err := tx.ProjectByName(catalog.DefaultProject); errors.Is(err, catalog.ErrNotFound) {
			_, err = tx.CreateProject(catalog.DefaultProject, now)
			return err
		} else {
			return err
		}
	})
	if err != nil {
		return fmt.Errorf("create default project: %w", err)
	}
	var adopted []string
	err = d.cat.Release(func(tx *catalog.Txn) error {
		var err error
		adopted, err = tx.AdoptLegacyHostAccess()
		return err
	})
	if err != nil {
		return fmt.Errorf("upgrade catalog: %w", err)
	}
	for _, a := range adopted {
		d.log.Warn("host path named before csbs recorded who named it: kept as the admin's; remove it if a project token made it", "record", a)
	}
	path := filepath.Join(d.cfg.DataDir, AdminTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		secret := strings.TrimSpace(string(b))
		valid := false
		_ = d.cat.View(func(tx *catalog.Txn) error {
			t, err := tx.TokenBySecret(secret)
			valid = err == nil && t.Project == ""
			return nil
		})
		if valid {
			return os.Chmod(path, 0o600)
		}
		d.log.Warn("admin token file does not match the store; writing a new admin token", "file", path)
	}
	var secret string
	err = d.cat.Update(func(tx *catalog.Txn) error {
		var err error
		_, secret, err = tx.CreateToken("", "admin", now)
		return err
	})
	if err != nil {
		return fmt.Errorf("create admin token: %w", err)
	}
	if err := durable.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	d.log.Info("created admin token", "file", path)
	return nil
}

// Serve runs until ctx ends, then shuts down: listeners stop, running
// jobs are cancelled (nothing half-done becomes visible), the store is
// synced and closed. ready, if not nil, is closed once the API listens.
func (d *Daemon) Serve(ctx context.Context, ready chan<- struct{}) error {
	d.started = d.clock.Now()
	d.api.Started = d.started
	if err := d.runner.Recover(); err != nil {
		d.store.Close()
		return err
	}
	if err := d.recoverRestores(); err != nil {
		d.store.Close()
		return err
	}
	if err := d.repl.Recover(); err != nil {
		d.store.Close()
		return err
	}
	listeners, err := d.listen()
	if err != nil {
		d.store.Close()
		return err
	}
	nbdListeners, err := d.serving.listen()
	if err != nil {
		for _, l := range listeners {
			l.Close()
		}
		d.store.Close()
		return err
	}
	metricsListener, err := d.listenMetrics()
	if err != nil {
		for _, l := range append(listeners, nbdListeners...) {
			l.Close()
		}
		d.store.Close()
		return err
	}
	if err := d.serving.recover(); err != nil {
		d.log.Error("recover exports and instant restores", "err", err)
	}
	d.mounts.Recover()
	// Live VM backups interrupted by a crash left objects in their VMs;
	// remove them without holding up the start (a VM whose monitor is
	// busy is retried before its next backup).
	go func() {
		if err := d.engine.RecoverVMSessions(context.Background()); err != nil {
			d.log.Warn("clean up after interrupted live VM backups", "err", err)
		}
	}()
	srv := &http.Server{Handler: d.api.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.runner.Run(runCtx) }()
	go func() { defer wg.Done(); d.sched.Run(runCtx) }()
	wg.Add(1)
	go func() { defer wg.Done(); d.repl.Run(runCtx) }()
	wg.Add(2)
	go func() { defer wg.Done(); d.maint.Run(runCtx, catalog.JobGC, schedule(d.cfg.GC)) }()
	go func() { defer wg.Done(); d.maint.Run(runCtx, catalog.JobScrub, schedule(d.cfg.Scrub)) }()
	wg.Add(1)
	go func() { defer wg.Done(); d.trimWhenIdle(runCtx) }()
	for _, l := range nbdListeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.serving.srv.Serve(runCtx, l); err != nil {
				d.log.Error("nbd listener", "err", err)
			}
		}()
	}
	var msrv *http.Server
	if metricsListener != nil {
		msrv = d.metricsServer()
		go func() {
			if err := msrv.Serve(metricsListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics listener", "err", err)
			}
		}()
	}
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	d.log.Info("csbs serving", "version", d.version, "region", d.cfg.Region, "socket", d.cfg.API.Socket, "nbd", d.cfg.NBD.Socket, "data", d.cfg.DataDir)
	if ready != nil {
		close(ready)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	d.log.Info("csbs shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if msrv != nil {
		_ = msrv.Shutdown(shutCtx)
	}
	stop()
	wg.Wait()
	d.mounts.Shutdown()
	d.serving.shutdown()
	os.Remove(d.cfg.API.Socket)
	os.Remove(d.cfg.NBD.Socket)
	if err := d.store.Sync(); err != nil {
		serveErr = errors.Join(serveErr, err)
	}
	// Badger's Close flushes memtables into new mapped files: on a full
	// file system that is SIGBUS, and it retries forever when it cannot
	// write at all (a vanished file system). Every acknowledged write is
	// synced already and the next start replays Badger's log, so the
	// daemon exits without it when the disk is full, and after a bounded
	// wait otherwise.
	if free, err := d.store.FreeBytes(); err == nil && free < int64(d.cfg.Store.MinFree)/2 {
		d.log.Warn("the store's file system is full: exiting without Badger's final flush (acknowledged writes are synced; the next start replays the log)", "free_mib", free>>20)
		return serveErr
	}
	closed := make(chan error, 1)
	go func() { closed <- d.store.Close() }()
	select {
	case err := <-closed:
		serveErr = errors.Join(serveErr, err)
	case <-time.After(30 * time.Second):
		serveErr = errors.Join(serveErr, fmt.Errorf("store %s did not close within 30s (cannot write?); exiting anyway: committed backups are synced", d.cfg.StoreDir()))
	}
	return serveErr
}

func (d *Daemon) listen() ([]net.Listener, error) {
	sock := d.cfg.API.Socket
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon answers on %s", sock)
	}
	os.Remove(sock) // stale socket of a crashed daemon
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return nil, err
	}
	// Create the socket with 0600 from the start: no window where others
	// could connect.
	l, err := listenUnixPrivate(sock)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	out := []net.Listener{l}
	if addr := d.cfg.API.TCPListen; addr != "" {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		if d.cfg.API.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(d.cfg.API.TLSCert, d.cfg.API.TLSKey)
			if err != nil {
				l.Close()
				tl.Close()
				return nil, fmt.Errorf("api TLS: %w", err)
			}
			tl = tls.NewListener(tl, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		} else {
			d.log.Warn("API on TCP without TLS (api.insecure = true)", "addr", addr)
		}
		out = append(out, tl)
	}
	return out, nil
}

// recoverRestores marks normal restores interrupted by a stop as failed
// (their targets were never renamed into place).
func (d *Daemon) recoverRestores() error {
	return d.cat.Release(func(tx *catalog.Txn) error {
		rs, err := tx.Restores("")
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.State == catalog.RestoreRunning && !r.Instant {
				for _, t := range r.Targets {
					if n, err := restore.CleanPartials(t.Target); err == nil && n > 0 {
						d.log.Info("removed the partial file of an interrupted restore", "target", t.Target)
					}
				}
				r.State = catalog.RestoreFailed
				r.Error = "interrupted: the daemon stopped during the restore; start it again"
				r.Ended = d.clock.Now().UTC()
				if err := tx.PutRestore(r); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// status fills in the store-wide parts of the status.
func (d *Daemon) status(_ context.Context, admin bool, st *api.Status) {
	st.Store.BlockSize = d.store.BlockSize()
	free, err := d.store.FreeBytes()
	minFree := int64(d.cfg.Store.MinFree)
	switch {
	case err != nil:
		st.Warnings = append(st.Warnings, "cannot read the store's free space: "+err.Error())
	case free < 2*minFree:
		st.Warnings = append(st.Warnings, fmt.Sprintf("the store's disk is nearly full: %d MiB free, backups stop at %d MiB; run csbs gc, delete backups or grow the disk", free>>20, minFree>>20))
	}
	st.Store.Backend = d.cfg.Store.Backend
	if !admin {
		return
	}
	if d.s3 != nil {
		st.Store.ObjectStore = objectStoreStatus(d.s3)
	}
	st.Store.DiskBytes, _ = d.store.DiskUsage()
	st.Store.FreeBytes, st.Store.MinFreeBytes = free, minFree
	cs := d.store.CacheStats()
	if n := cs.Hits + cs.Misses; n > 0 {
		st.Store.CacheHitRatio = float64(cs.Hits) / float64(n)
	}
	st.Store.CacheBytes, st.Store.CacheLimitBytes = cs.Bytes, cs.Limit
	st.Store.CacheAuto = d.cfg.Store.CacheSize == config.Auto
	st.Store.Workers, st.Store.GoMaxProcs, st.Store.CPUs = d.size.Workers, d.size.Procs, d.size.CPUs
	bs := d.store.Budget().Stats()
	st.Store.InflightBytes, st.Store.InflightLimitBytes, st.Store.InflightPeakBytes = bs.Used, bs.Total, bs.Peak
	st.Store.ReadCacheBytes = d.serving.readCacheBytes()
	if t, ok := d.maint.Next(catalog.JobGC); ok {
		st.NextGC = &t
	}
	if t, ok := d.maint.Next(catalog.JobScrub); ok {
		st.NextScrub = &t
	}
}

// NewLogger builds the daemon's logger from the config.
func NewLogger(cfg config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
