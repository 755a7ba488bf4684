package instant

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/hydrate"
	"csbs/internal/durable"
	"csbs/restore"
	"csbs/scheduler"
)

// Catalog is what the lifecycle reads and writes in the catalog.
type Catalog interface {
	// Backup reads a backup of a project.
	Backup(project, id string) (catalog.Backup, error)
	// Restore reads a restore of a project.
	Restore(project, id string) (catalog.Restore, error)
	// Restores lists the restores of every project.
	Restores() ([]catalog.Restore, error)
	// PutRestore records r.
	PutRestore(r catalog.Restore) error
	// UpdateRestore applies mod to the recorded restore and returns the
	// result.
	UpdateRestore(project, id string, mod func(*catalog.Restore)) (catalog.Restore, error)
}

// Store opens the backup volumes that restores read; *blockstore.Store
// implements it.
type Store interface {
	OpenVolume(id blockstore.MapID) (*blockstore.Volume, error)
}

var _ Store = (*blockstore.Store)(nil)

// Jobs runs the hydration of each restore as a job of kind hydrate
// (catalog.JobHydrate), whose executor calls Manager.Hydrate; the
// daemon's *scheduler.Runner implements it. A job canceled by a user
// cancels its restore; one canceled with the cause scheduler.ErrShutdown
// leaves it to Recover.
type Jobs interface {
	// Submit records a job and starts it.
	Submit(j catalog.Job) (catalog.Job, error)
	// Cancel cancels a running job of the project and returns once its
	// end is recorded; catalog.ErrConflict: it had ended already.
	Cancel(project, id string) (catalog.Job, error)
}

var _ Jobs = (*scheduler.Runner)(nil)

// Exports serves the restores' disks; the daemon's NBD export registry
// implements it.
type Exports interface {
	// Name is the export name of a restore's disk.
	Name(restoreID, disk string) string
	// Add serves e until Remove.
	Add(e Export)
	// Remove stops serving the export name, drops its connections and
	// closes its Closer. Removing an unknown name does nothing.
	Remove(name string)
}

// Export is one disk of an instant restore, to be served writable.
type Export struct {
	Name        string
	Description string
	Device      *hydrate.Device
	// BlockSize is the store's block size, the preferred I/O size.
	BlockSize  int
	Project    string
	RestoreID  string
	BackupID   string
	BackupName string
	Disk       string
	Size       int64
	// Closer is closed when the export is removed.
	Closer io.Closer
}

// Options are the Manager's peers and settings.
type Options struct {
	Catalog Catalog
	Store   Store
	Exports Exports
	Jobs    Jobs
	// Dir holds the hydration bitmaps, <restore>-<disk>.bitmap, and their
	// journals; it is created when needed.
	Dir string
	// DefaultRate is the hydration rate (bytes/s) of a restore started
	// without one; <= 0 is unlimited.
	DefaultRate int64
	// TargetGuard returns the open-time check of the targets of a restore
	// of project started by the admin (byAdmin) or by a project token.
	TargetGuard func(project string, byAdmin bool) (func(real string) error, error)
	// Acquire marks a backup in use (retention and deletion leave it
	// alone) until the returned func is called; nil: no counting.
	Acquire func(backupID string) func()
	// Workers copy blocks in each disk's hydration (all disks of a
	// restore hydrate at once); <= 0: GOMAXPROCS.
	Workers int
	// Budget, if set, lends hydration workers their block buffers (the
	// store's in-flight budget in the daemon).
	Budget hydrate.Budget
	// OnHydrated is told how many bytes hydration copied; nil: nothing.
	OnHydrated func(n int64)
	// Now tells the time of state changes; nil: time.Now.
	Now func() time.Time
	// Log receives recovery results; nil: discarded.
	Log *slog.Logger
}

// Manager runs the instant restores of one daemon.
type Manager struct {
	o Options

	mu       sync.Mutex
	restores map[string]*session
}

// session is one running (or paused, or complete) instant restore. Its
// r is the restore as opened and is not written after (the hydration job
// reads it); the record has what changes, such as the job's id.
type session struct {
	r       catalog.Restore
	bs      int64
	devs    []*hydrate.Device
	hyds    []*hydrate.Hydrator
	release func()
	// done is closed when hydration has ended: its job returned, or no
	// job was needed (complete already) or could be started.
	done     chan struct{}
	doneOnce sync.Once
	stopOnce sync.Once
	// copied counts the bytes hydration wrote (blocks that are zero on a
	// fresh target are not written); with runStart and startDone it gives
	// the copy rate and the time left.
	copied    atomic.Int64
	runMu     sync.Mutex
	runStart  time.Time
	startDone int64
}

// ended marks hydration as over.
func (s *session) ended() { s.doneOnce.Do(func() { close(s.done) }) }

// progress is the bytes of the restore's disks that are in their
// targets (hydrated, written by the guest, or zero on a fresh target),
// and the disks' total size.
func (s *session) progress() (done, total int64) {
	for _, dev := range s.devs {
		total += dev.Size()
		done += min(dev.Bitmap().Count()*s.bs, dev.Size())
	}
	return done, total
}

// New returns a Manager with no restores; Recover brings back those of
// a previous run.
func New(o Options) *Manager {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Acquire == nil {
		o.Acquire = func(string) func() { return func() {} }
	}
	return &Manager{o: o, restores: map[string]*session{}}
}

// Actions of Control.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionFinish = "finish"
	ActionCancel = "cancel"
)

// BitmapPath is where the hydration bitmap of disk of restore id lives.
func (m *Manager) BitmapPath(id, disk string) string {
	return filepath.Join(m.o.Dir, id+"-"+disk+".bitmap")
}

// CheckServable refuses a backup that cannot be served over NBD or
// restored instantly: a Common backup, or one that is not available.
func CheckServable(b catalog.Backup) error {
	if b.Type != catalog.TypeEnhanced {
		return fmt.Errorf("%w: backup %s is Common, and only Enhanced backups can be served over NBD or restored instantly (%s); restore it normally with csbs restore start", catalog.ErrInvalid, b.Name, b.TypeReason)
	}
	if b.Status != catalog.StatusAvailable {
		return fmt.Errorf("%w: backup %s is %s", catalog.ErrConflict, b.Name, b.Status)
	}
	return nil
}

// DiskMap finds a disk of a backup and its block map.
func DiskMap(b catalog.Backup, disk string) (catalog.BackupDisk, blockstore.MapID, error) {
	for _, d := range b.Disks {
		if d.Name == disk {
			id, err := blockstore.ParseMapID(d.MapID)
			return d, id, err
		}
	}
	return catalog.BackupDisk{}, blockstore.MapID{}, fmt.Errorf("%w: backup %s has no disk %q", catalog.ErrInvalid, b.Name, disk)
}

// Start creates the writable exports of an instant restore of b, records
// the restore and starts its hydration job. It returns at once, with the
// restore as recorded (its JobID set). A job that cannot be started
// leaves the exports serving and the restore recorded as failed, to be
// canceled.
func (m *Manager) Start(ctx context.Context, r catalog.Restore, b catalog.Backup) (catalog.Restore, error) {
	if err := CheckServable(b); err != nil {
		return r, err
	}
	if r.Rate == 0 {
		r.Rate = m.o.DefaultRate
	}
	for i := range r.Targets {
		r.Targets[i].Export = m.o.Exports.Name(r.ID, r.Targets[i].Disk)
	}
	s, err := m.open(r, b, true)
	if err != nil {
		return r, err
	}
	r = s.r
	if err := m.o.Catalog.PutRestore(r); err != nil {
		m.stop(s)
		return r, err
	}
	if err := m.run(s); err != nil {
		// The exports serve; only the background copy did not start.
		m.o.Log.Error("instant restore: hydration job not started", "restore", r.ID, "err", err)
		return m.setState(r, func(x *catalog.Restore) {
			x.State, x.Error = catalog.RestoreFailed, "hydration not started: "+err.Error()+" (the export still serves; cancel the restore to free it)"
		})
	}
	return m.o.Catalog.Restore(r.Project, r.ID)
}

// open builds the devices and exports of an instant restore (new, or
// recovered after a restart when create is false).
func (m *Manager) open(r catalog.Restore, b catalog.Backup, create bool) (*session, error) {
	if err := os.MkdirAll(m.o.Dir, 0o700); err != nil {
		return nil, err
	}
	// Targets are checked again as they are opened, under the host
	// access of whoever started the restore (also after a restart).
	guard, err := m.o.TargetGuard(r.Project, r.ByAdmin)
	if err != nil {
		return nil, err
	}
	// One limit for the whole restore: its disks hydrate at once and
	// share the rate.
	lim := hydrate.NewLimiter(r.Rate)
	s := &session{r: r, done: make(chan struct{}), release: m.o.Acquire(b.ID)}
	fail := func(err error) (*session, error) {
		m.stop(s)
		return nil, err
	}
	for i, t := range r.Targets {
		d, id, err := DiskMap(b, t.Disk)
		if err != nil {
			return fail(err)
		}
		vol, err := m.o.Store.OpenVolume(id)
		if err != nil {
			return fail(fmt.Errorf("backup %s disk %s: %w", b.Name, t.Disk, err))
		}
		f, fresh, err := restore.OpenInPlace(t.Target, d.Size, r.Force, create, guard)
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
			s.r.Targets[i].Fresh = fresh
		} else {
			fresh = t.Fresh
		}
		bs := int64(vol.BlockSize())
		s.bs = bs
		path := m.BitmapPath(r.ID, t.Disk)
		if !create {
			if err := hydrate.CheckBitmap(path); err != nil {
				f.Close()
				vol.Close()
				return fail(fmt.Errorf("%w; without it the blocks the guest wrote cannot be told from those still to copy, so the target %s is left as it is", err, t.Target))
			}
		}
		bm, err := hydrate.OpenBitmap(path, (d.Size+bs-1)/bs, vol.BlockSize(), d.Size)
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
		s.devs = append(s.devs, dev)
		h := hydrate.NewHydratorWith(dev, hydrate.Options{Limiter: lim, Workers: m.o.Workers, Budget: m.o.Budget})
		h.OnCopied = func(n int64) {
			s.copied.Add(n)
			if m.o.OnHydrated != nil {
				m.o.OnHydrated(n)
			}
		}
		s.hyds = append(s.hyds, h)
		m.o.Exports.Add(Export{
			Name: t.Export, Description: fmt.Sprintf("instant restore %s of %s %s", r.ID, b.Name, t.Disk),
			Device: dev, BlockSize: int(bs), Project: r.Project, RestoreID: r.ID,
			BackupID: b.ID, BackupName: b.Name, Disk: t.Disk, Size: d.Size,
			Closer: closeBoth{dev, vol},
		})
	}
	if r.State == catalog.RestorePaused {
		for _, h := range s.hyds {
			h.Pause()
		}
	}
	m.mu.Lock()
	m.restores[r.ID] = s
	m.mu.Unlock()
	return s, nil
}

type closeBoth struct {
	a, b io.Closer
}

func (c closeBoth) Close() error { return errors.Join(c.a.Close(), c.b.Close()) }

// run starts the hydration job of an instant restore and records its id
// in the restore. A complete restore needs none.
func (m *Manager) run(s *session) error {
	if s.r.State == catalog.RestoreComplete {
		s.ended()
		return nil
	}
	j, err := m.o.Jobs.Submit(catalog.Job{Project: s.r.Project, Kind: catalog.JobHydrate, BackupID: s.r.BackupID, RestoreID: s.r.ID})
	if err != nil {
		s.ended()
		return err
	}
	_, err = m.setState(s.r, func(x *catalog.Restore) { x.JobID = j.ID })
	return err
}

// progressReport is how often a hydration job's progress is updated.
const progressReport = 250 * time.Millisecond

// Hydrate is the body of a hydrate job (the daemon's executor calls it):
// it copies every disk of the instant restore j.RestoreID into its
// target, then records the restore complete (the exports stay up until
// finish). Canceled by a user (the job canceled, or the restore through
// it), it cancels the restore; stopped with the cause
// scheduler.ErrShutdown, it leaves the restore for Recover to resume at
// the next start.
func (m *Manager) Hydrate(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	m.mu.Lock()
	s := m.restores[j.RestoreID]
	m.mu.Unlock()
	if s == nil {
		return j, fmt.Errorf("restore %s is not open (it was finished, canceled or failed before hydration started)", j.RestoreID)
	}
	defer s.ended()
	done, total := s.progress()
	s.runMu.Lock()
	s.runStart, s.startDone = time.Now(), done
	s.runMu.Unlock()
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
				progress(s.progress())
			}
		}
	}()
	// Every disk at once: the workers of all of them share the CPUs, the
	// memory budget and the restore's rate limit. The first disk that
	// fails stops the others: the restore failed.
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		err   error
	)
	hctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	for _, h := range s.hyds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if herr := h.Run(hctx); herr != nil {
				errMu.Lock()
				if err == nil && hctx.Err() == nil {
					err = herr
				}
				errMu.Unlock()
				stopAll()
			}
		}()
	}
	wg.Wait()
	close(stopReports)
	<-reported
	progress(s.progress())
	if ctx.Err() != nil {
		if errors.Is(context.Cause(ctx), scheduler.ErrShutdown) {
			j.Note = "hydration resumes from its bitmap when the daemon starts again"
			return j, ctx.Err()
		}
		if _, cerr := m.cancel(s); cerr != nil {
			m.o.Log.Error("cancel instant restore", "restore", s.r.ID, "err", cerr)
		}
		j.Note = "restore " + s.r.ID + " canceled; its targets hold a partial disk"
		return j, ctx.Err()
	}
	_, serr := m.setState(s.r, func(r *catalog.Restore) {
		if err != nil {
			r.State, r.Error = catalog.RestoreFailed, "hydration stopped: "+err.Error()+" (the export still serves; cancel the restore to free it)"
			return
		}
		r.State, r.Done = catalog.RestoreComplete, r.Total
	})
	if err != nil {
		return j, fmt.Errorf("restore %s: hydration stopped: %w", s.r.ID, err)
	}
	j.Note = "restore " + s.r.ID + " is complete; csbs restore finish " + s.r.ID + " detaches its exports"
	return j, serr
}

func (m *Manager) setState(r catalog.Restore, mod func(*catalog.Restore)) (catalog.Restore, error) {
	return m.o.Catalog.UpdateRestore(r.Project, r.ID, mod)
}

// stop removes the exports of an instant restore and closes its
// devices. Its hydration must have ended (s.done), or never started.
func (m *Manager) stop(s *session) {
	s.stopOnce.Do(func() { m.stopNow(s) })
}

func (m *Manager) stopNow(s *session) {
	for _, t := range s.r.Targets {
		m.o.Exports.Remove(t.Export)
	}
	m.mu.Lock()
	delete(m.restores, s.r.ID)
	m.mu.Unlock()
	if s.release != nil {
		s.release()
	}
}

// Control pauses, resumes, finishes or cancels an instant restore (see
// the package documentation for which states allow what).
func (m *Manager) Control(ctx context.Context, r catalog.Restore, action string) (catalog.Restore, error) {
	m.mu.Lock()
	s := m.restores[r.ID]
	m.mu.Unlock()
	if s == nil {
		return r, fmt.Errorf("%w: restore %s is %s; only running instant restores can be paused, resumed, finished or canceled", catalog.ErrConflict, r.ID, r.State)
	}
	switch action {
	case ActionPause:
		for _, h := range s.hyds {
			h.Pause()
		}
		return m.setState(r, func(x *catalog.Restore) {
			if x.State == catalog.RestoreRunning {
				x.State = catalog.RestorePaused
			}
		})
	case ActionResume:
		for _, h := range s.hyds {
			h.Resume()
		}
		return m.setState(r, func(x *catalog.Restore) {
			if x.State == catalog.RestorePaused {
				x.State = catalog.RestoreRunning
			}
		})
	case ActionFinish:
		live := m.Live(r)
		if live.State != catalog.RestoreComplete {
			return r, fmt.Errorf("%w: restore %s has hydrated %d of %d bytes; wait until it is complete (csbs restore finish %s --wait), or cancel it", catalog.ErrConflict, r.ID, live.Done, live.Total, r.ID)
		}
		<-s.done // complete is recorded just before the job returns
		m.stop(s)
		out, err := m.setState(r, func(x *catalog.Restore) {
			x.State, x.Ended = catalog.RestoreSucceeded, m.o.Now().UTC()
			clearExports(x)
		})
		if err == nil {
			// Only now: a restart before the state was recorded reopens
			// the restore, and a new bitmap would hydrate over the guest.
			for _, t := range r.Targets {
				hydrate.RemoveBitmap(m.BitmapPath(r.ID, t.Disk))
			}
		}
		return out, err
	case ActionCancel:
		// A running hydration job cancels the restore as it ends.
		if r.JobID != "" {
			if _, err := m.o.Jobs.Cancel(r.Project, r.JobID); err != nil && !errors.Is(err, catalog.ErrConflict) && !errors.Is(err, catalog.ErrNotFound) {
				return r, err
			}
		}
		m.mu.Lock()
		s = m.restores[r.ID]
		m.mu.Unlock()
		if s == nil {
			return m.o.Catalog.Restore(r.Project, r.ID)
		}
		<-s.done
		return m.cancel(s)
	}
	return r, fmt.Errorf("%w: unknown restore action %q", catalog.ErrInvalid, action)
}

// cancel removes a canceled instant restore's exports and hydration
// state; its targets keep what was copied so far. The bitmaps go before
// canceled is recorded (see the package documentation).
func (m *Manager) cancel(s *session) (catalog.Restore, error) {
	m.stop(s)
	for _, t := range s.r.Targets {
		hydrate.RemoveBitmap(m.BitmapPath(s.r.ID, t.Disk))
	}
	return m.setState(s.r, func(x *catalog.Restore) {
		x.State, x.Ended = catalog.RestoreCanceled, m.o.Now().UTC()
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

// Live fills in the progress of an instant restore: the bytes in the
// targets, the rate at which hydration copies data (blocks it need not
// write excluded; the limit is r.Rate) and, while running, the time left
// at the pace so far. A restore this Manager does not run keeps its
// figures, but no export names: none serves it.
func (m *Manager) Live(r catalog.Restore) catalog.Restore {
	if !r.Instant {
		return r
	}
	m.mu.Lock()
	s := m.restores[r.ID]
	m.mu.Unlock()
	if s == nil {
		r.Targets = slices.Clone(r.Targets)
		clearExports(&r)
		return r
	}
	done, total := s.progress()
	r.Done, r.Total = done, total
	s.runMu.Lock()
	start, startDone := s.runStart, s.startDone
	s.runMu.Unlock()
	if start.IsZero() {
		return r
	}
	elapsed := max(time.Since(start).Seconds(), 0.001)
	r.RateBps = float64(s.copied.Load()) / elapsed
	if progressed := float64(done-startDone) / elapsed; progressed > 0 && done < total && r.State == catalog.RestoreRunning {
		r.ETASeconds = float64(total-done) / progressed
	}
	return r
}

// resumable reports whether Recover reopens a restore recorded as r.
func resumable(r catalog.Restore) bool {
	return r.Instant && (r.State == catalog.RestoreRunning || r.State == catalog.RestorePaused || r.State == catalog.RestoreComplete)
}

// Recover reopens the instant restores of a previous run (see the
// package documentation); call it before the exports are served.
func (m *Manager) Recover() error {
	rs, err := m.o.Catalog.Restores()
	if err != nil {
		return err
	}
	for _, r := range rs {
		if !resumable(r) {
			continue
		}
		b, err := m.o.Catalog.Backup(r.Project, r.BackupID)
		var s *session
		if err == nil {
			s, err = m.open(r, b, false)
		}
		if err != nil {
			m.o.Log.Error("instant restore not resumed", "restore", r.ID, "err", err)
			m.setState(r, func(x *catalog.Restore) {
				x.State, x.Error = catalog.RestoreFailed, "could not resume after restart: "+err.Error()
				clearExports(x)
			})
			continue
		}
		if err := m.run(s); err != nil {
			m.o.Log.Error("instant restore: hydration job not started", "restore", r.ID, "err", err)
			m.setState(r, func(x *catalog.Restore) {
				x.State, x.Error = catalog.RestoreFailed, "hydration not started after restart: "+err.Error()+" (the export still serves; cancel the restore to free it)"
			})
			continue
		}
		m.o.Log.Info("instant restore resumed", "restore", r.ID, "state", r.State)
	}
	return nil
}

// Shutdown removes every export and closes the devices; the recorded
// states stay, so that Recover resumes them at the next start. Call it
// after the hydration jobs have ended (the job runner stopped, which
// cancels them with scheduler.ErrShutdown): the devices must not close
// under a running hydration.
func (m *Manager) Shutdown() {
	m.mu.Lock()
	var all []*session
	for _, s := range m.restores {
		all = append(all, s)
	}
	m.mu.Unlock()
	for _, s := range all {
		m.stop(s)
	}
}

// CatalogOf is the Catalog of the appliance's catalog. Restore records
// are written as releasing writes (catalog.Release): a full disk must
// not keep a restore from being paused, finished or canceled.
func CatalogOf(c *catalog.Catalog) Catalog { return catalogRecords{c} }

type catalogRecords struct{ c *catalog.Catalog }

func (c catalogRecords) Backup(project, id string) (catalog.Backup, error) {
	var b catalog.Backup
	err := c.c.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(project, id)
		return err
	})
	return b, err
}

func (c catalogRecords) Restore(project, id string) (catalog.Restore, error) {
	var r catalog.Restore
	err := c.c.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Restore(project, id)
		return err
	})
	return r, err
}

func (c catalogRecords) Restores() ([]catalog.Restore, error) {
	var rs []catalog.Restore
	err := c.c.View(func(tx *catalog.Txn) error {
		var err error
		rs, err = tx.Restores("")
		return err
	})
	return rs, err
}

func (c catalogRecords) PutRestore(r catalog.Restore) error {
	return c.c.Release(func(tx *catalog.Txn) error { return tx.PutRestore(r) })
}

func (c catalogRecords) UpdateRestore(project, id string, mod func(*catalog.Restore)) (catalog.Restore, error) {
	var out catalog.Restore
	err := c.c.Release(func(tx *catalog.Txn) error {
		cur, err := tx.Restore(project, id)
		if err != nil {
			return err
		}
		mod(&cur)
		out = cur
		return tx.PutRestore(cur)
	})
	return out, err
}
