package instant

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/hydrate"
	"csbs/internal/durable"
	"csbs/restore"
)

// Catalog is what the lifecycle reads and writes in the catalog.
type Catalog interface {
	// Backup reads a backup of a project.
	Backup(project, id string) (catalog.Backup, error)
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

// session is one running (or paused, or complete) instant restore.
type session struct {
	r       catalog.Restore
	bs      int64
	devs    []*hydrate.Device
	hyds    []*hydrate.Hydrator
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	release func()
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
// the restore and starts hydration. It returns at once.
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
	m.run(s)
	return r, nil
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
		h := hydrate.NewHydrator(dev, r.Rate)
		if m.o.OnHydrated != nil {
			h.OnCopied = m.o.OnHydrated
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

// run hydrates every disk in the background and marks the restore
// complete (exports stay up until finish).
func (m *Manager) run(s *session) {
	if s.r.State == catalog.RestoreComplete {
		close(s.done)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		var err error
		for _, h := range s.hyds {
			if err = h.Run(ctx); err != nil {
				break
			}
		}
		if ctx.Err() != nil {
			return // stopped by cancel, finish or daemon shutdown
		}
		s.err = err
		m.setState(s.r, func(r *catalog.Restore) {
			r.Done = r.Total
			if err != nil {
				r.State, r.Error = catalog.RestoreFailed, "hydration stopped: "+err.Error()+" (the export still serves; cancel the restore to free it)"
				return
			}
			r.State = catalog.RestoreComplete
		})
	}()
}

func (m *Manager) setState(r catalog.Restore, mod func(*catalog.Restore)) (catalog.Restore, error) {
	return m.o.Catalog.UpdateRestore(r.Project, r.ID, mod)
}

// stop ends hydration, removes the exports and closes the devices.
func (m *Manager) stop(s *session) {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
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
			return r, fmt.Errorf("%w: restore %s has hydrated %d of %d bytes; wait until it is complete (or cancel it)", catalog.ErrConflict, r.ID, live.Done, live.Total)
		}
		m.stop(s)
		out, err := m.setState(r, func(x *catalog.Restore) {
			x.State, x.Ended = catalog.RestoreSucceeded, m.o.Now().UTC()
			x.Targets = r.Targets
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
		m.stop(s)
		for _, t := range r.Targets {
			hydrate.RemoveBitmap(m.BitmapPath(r.ID, t.Disk))
		}
		return m.setState(r, func(x *catalog.Restore) {
			x.State, x.Ended = catalog.RestoreCanceled, m.o.Now().UTC()
			x.Error = "canceled; the targets hold a partial disk"
		})
	}
	return r, fmt.Errorf("%w: unknown restore action %q", catalog.ErrInvalid, action)
}

// Live fills in the progress of an instant restore: bytes in the
// targets, the hydration rate and, while running, an estimate of the
// time left. Restores this Manager does not run come back unchanged.
func (m *Manager) Live(r catalog.Restore) catalog.Restore {
	m.mu.Lock()
	s := m.restores[r.ID]
	m.mu.Unlock()
	if s == nil || !r.Instant {
		return r
	}
	var done, total int64
	var rate float64
	for i, dev := range s.devs {
		bm := dev.Bitmap()
		total += dev.Size()
		done += min(bm.Count()*s.bs, dev.Size())
		rate += s.hyds[i].Rate()
	}
	r.Done, r.Total, r.RateBps = done, total, rate
	if rate > 0 && done < total && r.State == catalog.RestoreRunning {
		r.ETASeconds = float64(total-done) / rate
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
			})
			continue
		}
		m.run(s)
		m.o.Log.Info("instant restore resumed", "restore", r.ID, "state", r.State)
	}
	return nil
}

// Shutdown stops hydration and removes every export; the recorded
// states stay, so that Recover resumes them at the next start.
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
