package daemon

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"csbs/access"
	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/hydrate"
	"csbs/internal/durable"
	"csbs/nbd"
	"csbs/restore"
	"csbs/scheduler"
)

// serving owns the NBD exports: attached backups (read-only) and instant
// restores (writable, hydrating). It implements api.Serving and
// nbd.Exports.
type serving struct {
	d   *Daemon
	srv *nbd.Server

	// nameKey makes export names unguessable when NBD is on TCP (nil:
	// unix socket only, where the socket's mode is the access control).
	nameKey []byte

	mu       sync.Mutex
	exports  map[string]*served
	restores map[string]*instant
}

type served struct {
	exp     *nbd.Export
	info    api.ExportInfo
	project string
	closer  io.Closer
	release func()
	vol     *blockstore.Volume // attached backups: for the read cache's figures
}

// instant is an open instant restore. Its hydration runs as a job of kind
// hydrate (the runner calls serving.hydrate): progress in csbs job ls,
// csbs job wait until the targets are complete, csbs job cancel cancels
// the restore.
type instant struct {
	r       catalog.Restore
	devs    []*hydrate.Device
	hyds    []*hydrate.Hydrator
	release func()
	// done is closed when hydration has ended: its job returned, or no job
	// was needed (complete already) or could be started.
	done     chan struct{}
	doneOnce sync.Once
	stopOnce sync.Once
	// copied counts the bytes hydration wrote (blocks that are zero on a
	// fresh target are not written); with runStart and startDone it gives
	// the copy rate and the ETA.
	copied    atomic.Int64
	runMu     sync.Mutex
	runStart  time.Time
	startDone int64
}

// ended marks hydration as over.
func (in *instant) ended() { in.doneOnce.Do(func() { close(in.done) }) }

var (
	_ api.Serving = (*serving)(nil)
	_ nbd.Exports = (*serving)(nil)
)

func newServing(d *Daemon) *serving {
	s := &serving{d: d, exports: map[string]*served{}, restores: map[string]*instant{}}
	s.srv = &nbd.Server{Exports: s, Log: d.log, AllowList: true, MaxConnsPerExport: 64, Memory: d.store.Budget()}
	// Read cache files are unlinked when made; one left by a crash between
	// creating and unlinking it is removed here.
	stale, _ := filepath.Glob(filepath.Join(s.cacheDir(), "*.rcache"))
	for _, f := range stale {
		os.Remove(f)
	}
	return s
}

// cacheDir holds the attached exports' read cache files.
func (s *serving) cacheDir() string { return filepath.Join(s.d.cfg.DataDir, "cache") }

// readCacheBytes is what the attached exports' read cache files hold.
func (s *serving) readCacheBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, e := range s.exports {
		if e.vol != nil {
			n += e.vol.ReadCacheStats().Bytes
		}
	}
	return n
}

// nbdNameKeyFile holds the key that derives export names' secret part.
const nbdNameKeyFile = "nbd-names.key"

// enableSecretNames is called when NBD listens on TCP, where anyone who
// reaches the port could otherwise open an export by guessing its name:
// names get a secret part (stable across restarts, so that clients can
// reconnect) and NBD_OPT_LIST is refused.
func (s *serving) enableSecretNames() error {
	path := filepath.Join(s.d.cfg.DataDir, nbdNameKeyFile)
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("nbd name key: %w", err)
		}
		err = durable.WriteFile(path, key, 0o600)
	}
	if err != nil {
		return fmt.Errorf("nbd name key %s: %w", path, err)
	}
	if len(key) < 16 {
		return fmt.Errorf("nbd name key %s is too short; remove it to make a new one", path)
	}
	s.nameKey = key
	s.srv.AllowList = false
	return nil
}

// exportName is the NBD name of (object, disk): "<id>-<disk>", followed
// by a secret part when NBD is reachable over TCP.
func (s *serving) exportName(id, disk string) string {
	name := id + "-" + disk
	if s.nameKey == nil {
		return name
	}
	mac := hmac.New(sha256.New, s.nameKey)
	mac.Write([]byte(name))
	return name + "-" + hex.EncodeToString(mac.Sum(nil)[:12])
}

// Lookup finds an export for the NBD server.
func (s *serving) Lookup(name string) (*nbd.Export, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exports[name]
	if !ok {
		return nil, false
	}
	return e.exp, true
}

// Names lists export names for NBD_OPT_LIST.
func (s *serving) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.exports {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (s *serving) uris(name string) (string, string) {
	sock, _ := filepath.Abs(s.d.cfg.NBD.Socket)
	u := "nbd+unix:///" + name + "?socket=" + url.QueryEscape(sock)
	tcp := ""
	if addr := s.d.cfg.NBD.TCPListen; addr != "" {
		tcp = "nbd://" + addr + "/" + name
	}
	return u, tcp
}

func (s *serving) add(e *served) {
	e.info.URI, e.info.TCPURI = s.uris(e.exp.Name)
	s.mu.Lock()
	s.exports[e.exp.Name] = e
	s.mu.Unlock()
}

// remove unregisters an export, drops its connections and frees it.
func (s *serving) remove(name string) {
	s.mu.Lock()
	e := s.exports[name]
	delete(s.exports, name)
	s.mu.Unlock()
	if e == nil {
		return
	}
	s.srv.Disconnect(name)
	if e.closer != nil {
		e.closer.Close()
	}
	if e.release != nil {
		e.release()
	}
}

func diskMap(b catalog.Backup, disk string) (catalog.BackupDisk, blockstore.MapID, error) {
	for _, d := range b.Disks {
		if d.Name == disk {
			id, err := blockstore.ParseMapID(d.MapID)
			return d, id, err
		}
	}
	return catalog.BackupDisk{}, blockstore.MapID{}, fmt.Errorf("%w: backup %s has no disk %q", catalog.ErrInvalid, b.Name, disk)
}

func enhancedOnly(b catalog.Backup) error {
	if b.Type != catalog.TypeEnhanced {
		return fmt.Errorf("%w: backup %s is Common, and only Enhanced backups can be served over NBD or restored instantly (%s); restore it normally with csbs restore start", catalog.ErrInvalid, b.Name, b.TypeReason)
	}
	if b.Status != catalog.StatusAvailable {
		return fmt.Errorf("%w: backup %s is %s", catalog.ErrConflict, b.Name, b.Status)
	}
	return nil
}

// Attach exports a backup disk read-only. Attaching twice returns the
// existing export.
func (s *serving) Attach(ctx context.Context, b catalog.Backup, disk string) (api.ExportInfo, error) {
	if err := enhancedOnly(b); err != nil {
		return api.ExportInfo{}, err
	}
	name := s.exportName(b.ID, disk)
	s.mu.Lock()
	if e, ok := s.exports[name]; ok {
		s.mu.Unlock()
		return s.view(e), nil
	}
	s.mu.Unlock()
	if err := s.attach(b, disk, name); err != nil {
		return api.ExportInfo{}, err
	}
	err := s.d.cat.Release(func(tx *catalog.Txn) error {
		return tx.PutExportRecord(catalog.ExportRecord{Name: name, Project: b.Project, BackupID: b.ID, Disk: disk, Created: s.d.clock.Now().UTC()})
	})
	if err != nil {
		s.remove(name)
		return api.ExportInfo{}, err
	}
	s.mu.Lock()
	e := s.exports[name]
	s.mu.Unlock()
	return s.view(e), nil
}

func (s *serving) attach(b catalog.Backup, disk, name string) error {
	d, id, err := diskMap(b, disk)
	if err != nil {
		return err
	}
	release := s.d.engine.Acquire(b.ID)
	vol, err := s.d.store.OpenVolume(id)
	if err != nil {
		release()
		return fmt.Errorf("backup %s disk %s: %w", b.Name, disk, err)
	}
	if n := int64(s.d.cfg.NBD.AttachCacheSize); n > 0 {
		// Without it the export still works, reading every block from
		// the store.
		if err := vol.EnableReadCache(s.cacheDir(), n); err != nil {
			s.d.log.Warn("attached export without a read cache file", "export", name, "err", err)
		}
	}
	s.add(&served{
		exp:     &nbd.Export{Name: name, Description: fmt.Sprintf("%s %s %s (read-only)", b.ServerName, b.Name, disk), Device: nbd.VolumeDevice{Volume: vol}, ReadOnly: true, PreferredBlock: uint32(s.d.store.BlockSize())},
		info:    api.ExportInfo{Name: name, Kind: "attach", BackupID: b.ID, BackupName: b.Name, Disk: d.Name, ReadOnly: true, Size: d.Size},
		project: b.Project, closer: vol, release: release, vol: vol,
	})
	return nil
}

// Detach removes an attached export.
func (s *serving) Detach(ctx context.Context, b catalog.Backup, disk string) error {
	name := s.exportName(b.ID, disk)
	s.mu.Lock()
	e, ok := s.exports[name]
	s.mu.Unlock()
	if !ok || e.info.Kind != "attach" {
		return fmt.Errorf("backup %s disk %s is not attached: %w", b.Name, disk, catalog.ErrNotFound)
	}
	s.remove(name)
	return s.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteExportRecord(name) })
}

func (s *serving) view(e *served) api.ExportInfo {
	v := e.info
	v.Connections = s.srv.Connections()[e.exp.Name]
	return v
}

// Exports lists a project's exports.
func (s *serving) Exports(project string) []api.ExportInfo {
	s.mu.Lock()
	var es []*served
	for _, e := range s.exports {
		if e.project == project {
			es = append(es, e)
		}
	}
	s.mu.Unlock()
	out := []api.ExportInfo{}
	for _, e := range es {
		out = append(out, s.view(e))
	}
	slices.SortFunc(out, func(a, b api.ExportInfo) int { return compare(a.Name, b.Name) })
	return out
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *serving) bitmapPath(rid, disk string) string {
	return filepath.Join(s.d.cfg.DataDir, "restores", rid+"-"+disk+".bitmap")
}

// StartInstant creates the writable exports of an instant restore and
// starts hydration. It returns at once.
func (s *serving) StartInstant(ctx context.Context, r catalog.Restore, b catalog.Backup) (catalog.Restore, error) {
	if err := enhancedOnly(b); err != nil {
		return r, err
	}
	if r.Rate == 0 {
		r.Rate = int64(s.d.cfg.Restore.DefaultRate)
	}
	for i := range r.Targets {
		r.Targets[i].Export = s.exportName(r.ID, r.Targets[i].Disk)
	}
	inst, err := s.open(r, b, true)
	if err != nil {
		return r, err
	}
	r = inst.r
	if err := s.d.cat.Release(func(tx *catalog.Txn) error { return tx.PutRestore(r) }); err != nil {
		s.stop(inst)
		return r, err
	}
	if err := s.run(inst); err != nil {
		// The exports serve; only the background copy did not start.
		s.d.log.Error("instant restore: hydration job not started", "restore", r.ID, "err", err)
		return s.setState(r, func(x *catalog.Restore) {
			x.State, x.Error = catalog.RestoreFailed, "hydration not started: "+err.Error()+" (the export still serves; cancel the restore to free it)"
		})
	}
	return s.restoreNow(r)
}

// restoreNow reads a restore's record back (with the job id run set).
func (s *serving) restoreNow(r catalog.Restore) (catalog.Restore, error) {
	err := s.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Restore(r.Project, r.ID)
		return err
	})
	return r, err
}

// open builds the devices and exports of an instant restore (new, or
// recovered after a restart when create is false).
func (s *serving) open(r catalog.Restore, b catalog.Backup, create bool) (*instant, error) {
	if err := os.MkdirAll(filepath.Join(s.d.cfg.DataDir, "restores"), 0o700); err != nil {
		return nil, err
	}
	// Targets are checked again as they are opened, under the host
	// access of whoever started the restore (also after a restart).
	caller, err := s.d.engine.Caller(r.Project, r.ByAdmin)
	if err != nil {
		return nil, err
	}
	// One limit for the whole restore: its disks hydrate at once and
	// share the rate.
	lim := hydrate.NewLimiter(r.Rate)
	inst := &instant{r: r, done: make(chan struct{}), release: s.d.engine.Acquire(b.ID)}
	fail := func(err error) (*instant, error) {
		s.stop(inst)
		return nil, err
	}
	for i, t := range r.Targets {
		d, id, err := diskMap(b, t.Disk)
		if err != nil {
			return fail(err)
		}
		vol, err := s.d.store.OpenVolume(id)
		if err != nil {
			return fail(fmt.Errorf("backup %s disk %s: %w", b.Name, t.Disk, err))
		}
		f, fresh, err := restore.OpenInPlace(t.Target, d.Size, r.Force, create, s.d.engine.TargetGuard(caller))
		if err != nil {
			vol.Close()
			if errors.Is(err, access.ErrDenied) {
				return fail(err) // names the target already
			}
			if errors.Is(err, restore.ErrNotATarget) || errors.Is(err, restore.ErrTargetNotEmpty) {
				return fail(fmt.Errorf("%w: restore target %s: %w", catalog.ErrInvalid, t.Target, err))
			}
			return fail(fmt.Errorf("restore target %s: %w", t.Target, err))
		}
		if create {
			// The target's name and size must be on disk before the guest
			// can flush anything into it.
			if err := errors.Join(f.Sync(), durable.SyncDir(filepath.Dir(t.Target))); err != nil {
				f.Close()
				vol.Close()
				return fail(fmt.Errorf("restore target %s: %w", t.Target, err))
			}
			inst.r.Targets[i].Fresh = fresh
		} else {
			fresh = t.Fresh
		}
		bs := int64(vol.BlockSize())
		bm, err := hydrate.OpenBitmap(s.bitmapPath(r.ID, t.Disk), (d.Size+bs-1)/bs, vol.BlockSize(), d.Size)
		if err != nil {
			f.Close()
			vol.Close()
			return fail(err)
		}
		dev, err := hydrate.NewDevice(vol, f, bm, fresh)
		if err != nil {
			bm.Close()
			f.Close()
			vol.Close()
			return fail(err)
		}
		inst.devs = append(inst.devs, dev)
		h := hydrate.NewHydratorWith(dev, hydrate.Options{Limiter: lim, Workers: s.d.store.Workers(), Budget: s.d.store.Budget()})
		h.OnCopied = func(n int64) {
			inst.copied.Add(n)
			s.d.metrics.HydrationBytes.Add(float64(n))
		}
		inst.hyds = append(inst.hyds, h)
		s.add(&served{
			exp:     &nbd.Export{Name: t.Export, Description: fmt.Sprintf("instant restore %s of %s %s", r.ID, b.Name, t.Disk), Device: dev, PreferredBlock: uint32(bs)},
			info:    api.ExportInfo{Name: t.Export, Kind: "instant", BackupID: b.ID, BackupName: b.Name, Disk: t.Disk, RestoreID: r.ID, Size: d.Size},
			project: r.Project, closer: closeBoth{dev, vol},
		})
	}
	if r.State == catalog.RestorePaused {
		for _, h := range inst.hyds {
			h.Pause()
		}
	}
	s.mu.Lock()
	s.restores[r.ID] = inst
	s.mu.Unlock()
	return inst, nil
}

type closeBoth struct {
	a, b io.Closer
}

func (c closeBoth) Close() error { return errors.Join(c.a.Close(), c.b.Close()) }

// run starts the hydration job of an instant restore and records its id
// in the restore. A complete restore needs none.
func (s *serving) run(inst *instant) error {
	if inst.r.State == catalog.RestoreComplete {
		inst.ended()
		return nil
	}
	j, err := s.d.runner.Submit(catalog.Job{Project: inst.r.Project, Kind: catalog.JobHydrate, BackupID: inst.r.BackupID, RestoreID: inst.r.ID})
	if err != nil {
		inst.ended()
		return err
	}
	// inst.r stays as opened (the job reads it); the record has the job.
	_, err = s.setState(inst.r, func(x *catalog.Restore) { x.JobID = j.ID })
	return err
}

// progressReport is how often a hydration job's progress is updated.
const progressReport = 250 * time.Millisecond

// hydrate is the body of a hydrate job: it copies every disk of the
// instant restore into its target, then marks the restore complete (the
// exports stay up until csbs restore finish). Canceled by the user (csbs
// job cancel or restore cancel), it cancels the restore; stopped by a
// shutdown, it leaves the restore to resume at the next start.
func (s *serving) hydrate(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	s.mu.Lock()
	inst := s.restores[j.RestoreID]
	s.mu.Unlock()
	if inst == nil {
		return j, fmt.Errorf("restore %s is not open (it was finished, canceled or failed before hydration started)", j.RestoreID)
	}
	defer inst.ended()
	done, total := inst.progress(s.d.store.BlockSize())
	inst.runMu.Lock()
	inst.runStart, inst.startDone = time.Now(), done
	inst.runMu.Unlock()
	progress(done, total)
	stopReports := make(chan struct{})
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		t := time.NewTicker(progressReport)
		defer t.Stop()
		for {
			select {
			case <-stopReports:
				return
			case <-t.C:
				progress(inst.progress(s.d.store.BlockSize()))
			}
		}
	}()
	// Every disk at once: the workers of all of them share the CPUs, the
	// memory budget and the restore's rate limit.
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		err   error
	)
	hctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	for _, h := range inst.hyds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if herr := h.Run(hctx); herr != nil {
				errMu.Lock()
				if err == nil && hctx.Err() == nil {
					err = herr
				}
				errMu.Unlock()
				stopAll() // one disk failed: the restore failed
			}
		}()
	}
	wg.Wait()
	close(stopReports)
	<-reported
	progress(inst.progress(s.d.store.BlockSize()))
	if ctx.Err() != nil {
		if errors.Is(context.Cause(ctx), scheduler.ErrShutdown) {
			j.Note = "hydration resumes from its bitmap when the daemon starts again"
			return j, ctx.Err()
		}
		// csbs job cancel, or csbs restore cancel through it.
		if _, cerr := s.cancelInstant(inst); cerr != nil {
			s.d.log.Error("cancel instant restore", "restore", inst.r.ID, "err", cerr)
		}
		j.Note = "restore " + inst.r.ID + " canceled; its targets hold a partial disk"
		return j, ctx.Err()
	}
	_, serr := s.setState(inst.r, func(r *catalog.Restore) {
		if err != nil {
			r.State, r.Error = catalog.RestoreFailed, "hydration stopped: "+err.Error()+" (the export still serves; cancel the restore to free it)"
			return
		}
		r.State, r.Done = catalog.RestoreComplete, r.Total
	})
	if err != nil {
		return j, fmt.Errorf("restore %s: hydration stopped: %w", inst.r.ID, err)
	}
	j.Note = "restore " + inst.r.ID + " is complete; csbs restore finish " + inst.r.ID + " detaches its exports"
	return j, serr
}

// progress is the bytes of the restore's disks that are in their targets
// (hydrated, written by the guest, or zero on a fresh target), and the
// disks' total size.
func (in *instant) progress(blockSize int) (done, total int64) {
	for _, dev := range in.devs {
		total += dev.Size()
		done += min(dev.Bitmap().Count()*int64(blockSize), dev.Size())
	}
	return done, total
}

func (s *serving) setState(r catalog.Restore, mod func(*catalog.Restore)) (catalog.Restore, error) {
	var out catalog.Restore
	err := s.d.cat.Release(func(tx *catalog.Txn) error {
		cur, err := tx.Restore(r.Project, r.ID)
		if err != nil {
			return err
		}
		mod(&cur)
		out = cur
		return tx.PutRestore(cur)
	})
	return out, err
}

// stop removes the exports of an instant restore and closes its devices.
// Its hydration must have ended (inst.done), or never started.
func (s *serving) stop(inst *instant) {
	inst.stopOnce.Do(func() { s.stopNow(inst) })
}

func (s *serving) stopNow(inst *instant) {
	for _, t := range inst.r.Targets {
		s.remove(t.Export)
	}
	s.mu.Lock()
	delete(s.restores, inst.r.ID)
	s.mu.Unlock()
	if inst.release != nil {
		inst.release()
	}
}

// ControlRestore pauses, resumes, finishes or cancels an instant restore.
func (s *serving) ControlRestore(ctx context.Context, r catalog.Restore, action string) (catalog.Restore, error) {
	s.mu.Lock()
	inst := s.restores[r.ID]
	s.mu.Unlock()
	if inst == nil {
		return r, fmt.Errorf("%w: restore %s is %s; only running instant restores can be paused, resumed, finished or canceled", catalog.ErrConflict, r.ID, r.State)
	}
	switch action {
	case "pause":
		for _, h := range inst.hyds {
			h.Pause()
		}
		return s.setState(r, func(x *catalog.Restore) {
			if x.State == catalog.RestoreRunning {
				x.State = catalog.RestorePaused
			}
		})
	case "resume":
		for _, h := range inst.hyds {
			h.Resume()
		}
		return s.setState(r, func(x *catalog.Restore) {
			if x.State == catalog.RestorePaused {
				x.State = catalog.RestoreRunning
			}
		})
	case "finish":
		live := s.LiveRestore(r)
		if live.State != catalog.RestoreComplete {
			return r, fmt.Errorf("%w: restore %s has hydrated %d of %d bytes; wait until it is complete (csbs restore finish %s --wait), or cancel it", catalog.ErrConflict, r.ID, live.Done, live.Total, r.ID)
		}
		<-inst.done // complete is recorded just before the job returns
		s.stop(inst)
		out, err := s.setState(r, func(x *catalog.Restore) {
			x.State, x.Ended = catalog.RestoreSucceeded, s.d.clock.Now().UTC()
			clearExports(x)
		})
		if err == nil {
			// Only now: a restart before the state was recorded reopens
			// the restore, and a new bitmap would hydrate over the guest.
			for _, t := range r.Targets {
				hydrate.RemoveBitmap(s.bitmapPath(r.ID, t.Disk))
			}
		}
		return out, err
	case "cancel":
		// A running hydration job cancels the restore as it ends.
		if r.JobID != "" {
			if _, err := s.d.runner.Cancel(r.Project, r.JobID); err != nil && !errors.Is(err, catalog.ErrConflict) && !errors.Is(err, catalog.ErrNotFound) {
				return r, err
			}
		}
		s.mu.Lock()
		inst = s.restores[r.ID]
		s.mu.Unlock()
		if inst == nil {
			return s.restoreNow(r)
		}
		<-inst.done
		return s.cancelInstant(inst)
	}
	return r, fmt.Errorf("%w: unknown restore action %q", catalog.ErrInvalid, action)
}

// cancelInstant removes a canceled instant restore's exports and
// hydration state; its targets keep what was copied so far.
func (s *serving) cancelInstant(inst *instant) (catalog.Restore, error) {
	s.stop(inst)
	for _, t := range inst.r.Targets {
		hydrate.RemoveBitmap(s.bitmapPath(inst.r.ID, t.Disk))
	}
	return s.setState(inst.r, func(x *catalog.Restore) {
		x.State, x.Ended = catalog.RestoreCanceled, s.d.clock.Now().UTC()
		x.Error = "canceled; the targets hold a partial disk"
		clearExports(x)
	})
}

// clearExports drops the export names of a restore whose exports are
// gone, so that nobody is sent to them.
func clearExports(r *catalog.Restore) {
	for i := range r.Targets {
		r.Targets[i].Export = ""
	}
}

// LiveRestore fills in the progress of an instant restore: the bytes in
// the targets, the rate at which hydration copies data (holes excluded;
// the limit is r.Rate) and, from the progress so far, the time left.
func (s *serving) LiveRestore(r catalog.Restore) catalog.Restore {
	s.mu.Lock()
	inst := s.restores[r.ID]
	s.mu.Unlock()
	if !r.Instant {
		return r
	}
	if inst == nil {
		// Not open: whatever the record says, no export serves it.
		r.Targets = slices.Clone(r.Targets)
		clearExports(&r)
		return r
	}
	done, total := inst.progress(s.d.store.BlockSize())
	r.Done, r.Total = done, total
	inst.runMu.Lock()
	start, startDone := inst.runStart, inst.startDone
	inst.runMu.Unlock()
	if start.IsZero() {
		return r
	}
	elapsed := max(time.Since(start).Seconds(), 0.001)
	r.RateBps = float64(inst.copied.Load()) / elapsed
	if progressed := float64(done-startDone) / elapsed; progressed > 0 && done < total && r.State == catalog.RestoreRunning {
		r.ETASeconds = float64(total-done) / progressed
	}
	return r
}

// recover brings back attached exports and unfinished instant restores.
func (s *serving) recover() error {
	var exps []catalog.ExportRecord
	var rs []catalog.Restore
	err := s.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		if exps, err = tx.ExportRecords(); err != nil {
			return err
		}
		rs, err = tx.Restores("")
		return err
	})
	if err != nil {
		return err
	}
	for _, e := range exps {
		b, err := s.backup(e.Project, e.BackupID)
		if name := s.exportName(e.BackupID, e.Disk); err == nil && name != e.Name {
			// nbd.tcp_listen changed: the name's secret part comes or goes.
			old := e.Name
			e.Name = name
			err = s.d.cat.Release(func(tx *catalog.Txn) error {
				if err := tx.DeleteExportRecord(old); err != nil {
					return err
				}
				return tx.PutExportRecord(e)
			})
		}
		if err == nil {
			err = s.attach(b, e.Disk, e.Name)
		}
		if err != nil {
			s.d.log.Warn("attached export not restored", "export", e.Name, "err", err)
			_ = s.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteExportRecord(e.Name) })
		}
	}
	for _, r := range rs {
		if !r.Instant || (r.State != catalog.RestoreRunning && r.State != catalog.RestorePaused && r.State != catalog.RestoreComplete) {
			continue
		}
		b, err := s.backup(r.Project, r.BackupID)
		var inst *instant
		if err == nil {
			inst, err = s.open(r, b, false)
		}
		if err != nil {
			s.d.log.Error("instant restore not resumed", "restore", r.ID, "err", err)
			s.setState(r, func(x *catalog.Restore) {
				x.State, x.Error = catalog.RestoreFailed, "could not resume after restart: "+err.Error()
				clearExports(x)
			})
			continue
		}
		if err := s.run(inst); err != nil {
			s.d.log.Error("instant restore: hydration job not started", "restore", r.ID, "err", err)
			s.setState(r, func(x *catalog.Restore) {
				x.State, x.Error = catalog.RestoreFailed, "hydration not started after restart: "+err.Error()+" (the export still serves; cancel the restore to free it)"
			})
			continue
		}
		s.d.log.Info("instant restore resumed", "restore", r.ID, "state", r.State)
	}
	return nil
}

func (s *serving) backup(project, id string) (catalog.Backup, error) {
	var b catalog.Backup
	err := s.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(project, id)
		return err
	})
	return b, err
}

// listen opens the NBD listeners: the unix socket (0600) and, when
// configured, TCP.
func (s *serving) listen() ([]net.Listener, error) {
	if s.d.cfg.NBD.TCPListen != "" {
		if err := s.enableSecretNames(); err != nil {
			return nil, err
		}
	}
	sock := s.d.cfg.NBD.Socket
	os.Remove(sock)
	l, err := listenUnixPrivate(sock)
	if err != nil {
		return nil, fmt.Errorf("nbd listen on %s: %w", sock, err)
	}
	out := []net.Listener{l}
	if addr := s.d.cfg.NBD.TCPListen; addr != "" {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("nbd listen on %s: %w", addr, err)
		}
		out = append(out, tl)
	}
	return out, nil
}

// shutdown stops hydration (state stays, to resume at next start) and
// closes every export.
func (s *serving) shutdown() {
	s.mu.Lock()
	var insts []*instant
	for _, in := range s.restores {
		insts = append(insts, in)
	}
	s.mu.Unlock()
	for _, in := range insts {
		s.stop(in)
	}
	for _, n := range s.Names() {
		s.remove(n)
	}
}
