// Package engine carries out the work behind jobs: a backup of all disks
// of a server (ingest every disk, then commit maps and the catalog record
// in one transaction), and a normal restore of a backup's disks to
// targets. It joins blockstore, catalog, source and restore; the
// scheduler decides when it runs.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/qemu"
	"csbs/restore"
	"csbs/source"
)

// Engine runs backups and restores.
type Engine struct {
	Store       *blockstore.Store
	Catalog     *catalog.Catalog
	Now         func() time.Time
	Log         *slog.Logger
	AllowedDirs []string // disk sources must lie below one of these; empty = anywhere
	// ProtectedPaths are files a restore must never write (the store's
	// directory, the daemon's sockets).
	ProtectedPaths []string

	// VMDir is where live VM backups keep their session files (fleecing
	// overlays, QEMU's NBD socket, the record of what was added to the
	// VM): <data_dir>/vm.
	VMDir string

	hooks *Hooks

	mu      sync.Mutex
	inUse   map[string]int           // backup id → users (restores, exports, mounts)
	vmLocks map[string]chan struct{} // QMP socket → one backup at a time
}

// Hooks are test hook points; nil outside tests.
type Hooks struct {
	// AfterPointInTime runs when a live VM backup has fixed its point in
	// time, before anything is read.
	AfterPointInTime func()
}

// SetHooks installs test hooks.
func (e *Engine) SetHooks(h *Hooks) { e.hooks = h }

// Acquire marks a backup as in use so that retention and deletion leave
// it alone; the returned func releases it.
func (e *Engine) Acquire(backupID string) func() {
	e.mu.Lock()
	if e.inUse == nil {
		e.inUse = map[string]int{}
	}
	e.inUse[backupID]++
	e.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			if e.inUse[backupID]--; e.inUse[backupID] <= 0 {
				delete(e.inUse, backupID)
			}
			e.mu.Unlock()
		})
	}
}

// InUse reports whether a backup is being read by a restore, export or mount.
func (e *Engine) InUse(backupID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inUse[backupID] > 0
}

// CheckSource validates a disk source for a new server and returns its
// size: the path must be allowed, exist and be readable.
func (e *Engine) CheckSource(ctx context.Context, spec string) (int64, error) {
	if qemu.IsURI(spec) {
		return e.checkVMSource(ctx, spec)
	}
	if !strings.Contains(spec, "://") {
		if !filepath.IsAbs(spec) {
			return 0, fmt.Errorf("%w: disk source %q: use an absolute path", catalog.ErrInvalid, spec)
		}
		if err := e.allowedPath(spec); err != nil {
			return 0, err
		}
	}
	size, err := source.Validate(ctx, spec)
	if err != nil {
		return 0, fmt.Errorf("%w: disk source %s: %v", catalog.ErrInvalid, spec, err)
	}
	return size, nil
}

func (e *Engine) allowedPath(p string) error {
	if len(e.AllowedDirs) == 0 {
		return nil
	}
	clean := filepath.Clean(p)
	if real, err := filepath.EvalSymlinks(clean); err == nil {
		clean = real
	}
	for _, d := range e.AllowedDirs {
		if rel, err := filepath.Rel(d, clean); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return nil
		}
	}
	return fmt.Errorf("%w: disk source %s is outside sources.allowed_dirs (%s)", catalog.ErrInvalid, p, strings.Join(e.AllowedDirs, ", "))
}

// Backup backs up every disk of the job's server and commits the backup.
// progress receives bytes done and total over all disks.
func (e *Engine) Backup(ctx context.Context, job catalog.Job, progress func(done, total int64)) (catalog.Backup, error) {
	var (
		project catalog.Project
		server  catalog.Server
	)
	err := e.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		if project, err = tx.Project(job.Project); err != nil {
			return err
		}
		server, err = tx.Server(job.Project, job.ServerID)
		return err
	})
	if err != nil {
		return catalog.Backup{}, err
	}
	req := catalog.BackupRequest{Trigger: job.Trigger, Full: job.Full, EnableIR: job.EnableIR}
	decision, err := catalog.DecideType(project, server, req)
	if err != nil {
		return catalog.Backup{}, err
	}
	if len(server.Disks) == 0 {
		return catalog.Backup{}, fmt.Errorf("server %s has no disks", server.Name)
	}

	backupID := job.BackupID
	if backupID == "" {
		backupID = catalog.NewID(catalog.KindBackup)
	}

	// Open every source first, so that a missing disk fails before work.
	// Disks that can report changed blocks (live VM disks, NBD URIs
	// naming a dirty bitmap) get their parent first: only the last backup
	// of the disk qualifies, and it stays in use until the commit.
	reads := make([]diskRead, len(server.Disks))
	parents := make([]parentCandidate, len(server.Disks))
	var releases []func()
	var sess *qemu.Session
	var unlockVM func()
	committed := false
	defer func() {
		for _, r := range reads {
			if r.src != nil {
				r.src.Close()
			}
		}
		if sess != nil {
			if err := sess.End(context.WithoutCancel(ctx), committed); err != nil {
				e.Log.Warn("clean up VM after backup", "server", server.Name, "err", err)
			}
			unlockVM()
		}
		for _, r := range releases {
			r()
		}
	}()
	var vmDisks []int
	for i, d := range server.Disks {
		bitmap := nbdBitmap(d.Source)
		isVM := qemu.IsURI(d.Source)
		if isVM || bitmap != "" {
			p, release, reason := e.cbtParent(project.ID, d, job)
			releases = append(releases, release)
			parents[i], reads[i].fullRead = p, reason
		}
		switch {
		case isVM:
			vmDisks = append(vmDisks, i)
		case bitmap != "":
			if err := openNBDTracked(ctx, d, bitmap, parents[i], &reads[i]); err != nil {
				return catalog.Backup{}, fmt.Errorf("server %s disk %s: %w", server.Name, d.Name, err)
			}
		default:
			src, err := source.Open(ctx, d.Source)
			if err != nil {
				return catalog.Backup{}, fmt.Errorf("server %s disk %s: %w", server.Name, d.Name, err)
			}
			reads[i].src = src
		}
	}
	if len(vmDisks) > 0 {
		var err error
		if sess, unlockVM, err = e.openVM(ctx, server, job, backupID, vmDisks, reads, parents); err != nil {
			return catalog.Backup{}, err
		}
	}
	var total int64
	for _, r := range reads {
		total += r.src.Size()
	}

	var pending []*blockstore.PendingMap
	abort := func() {
		for _, p := range pending {
			if err := p.Abort(context.WithoutCancel(ctx)); err != nil {
				e.Log.Warn("abort pending map", "map", p.Info.ID, "err", err)
			}
		}
	}
	var before int64
	for i, d := range server.Disks {
		opt := blockstore.IngestOptions{Parent: reads[i].parent, Progress: func(done, _ int64) {
			if progress != nil {
				progress(before+done, total)
			}
		}}
		p, err := e.Store.Ingest(ctx, reads[i].src, opt)
		if err != nil {
			abort()
			if sess != nil && sess.Gone() != nil {
				return catalog.Backup{}, fmt.Errorf("server %s disk %s: the VM stopped or crashed during the backup; nothing was saved: %w", server.Name, d.Name, err)
			}
			return catalog.Backup{}, fmt.Errorf("server %s disk %s: %w", server.Name, d.Name, err)
		}
		pending = append(pending, p)
		before += reads[i].src.Size()
	}

	b := catalog.Backup{
		ID: backupID, Project: project.ID, ServerID: server.ID, ServerName: server.Name,
		Name: job.BackupName, Created: e.Now().UTC(), Status: catalog.StatusAvailable,
		Type: decision.Type, TypeReason: decision.Reason, Trigger: job.Trigger, Full: job.Full,
		PolicyID: job.PolicyID,
	}
	var notes []string
	if sess != nil {
		b.Consistency = sess.Consistency()
		notes = append(notes, sess.Notes()...)
	}
	for i, d := range server.Disks {
		st := pending[i].Info.Stats
		bd := catalog.BackupDisk{
			Name: d.Name, MapID: pending[i].Info.ID.String(), Size: pending[i].Info.Size,
			NewBytes: st.NewBytes, Blocks: st.DataBlocks, ReadBytes: st.ReadBytes,
		}
		if r := reads[i]; r.tracks {
			bd.Bitmap, bd.ChangedFrom, bd.FullRead = r.bitmap, r.parentID, r.fullRead
			if r.parent == nil {
				notes = append(notes, fmt.Sprintf("disk %s: full read: %s", d.Name, r.fullRead))
			} else {
				notes = append(notes, fmt.Sprintf("disk %s: changed blocks since %s: read %d of %d bytes", d.Name, parents[i].backup.Name, st.ReadBytes, st.LogicalBytes))
			}
			if st.ParentMissing > 0 {
				notes = append(notes, fmt.Sprintf("disk %s: %d blocks of the parent were no longer stored and were read again", d.Name, st.ParentMissing))
			}
		}
		b.Disks = append(b.Disks, bd)
	}
	b.Note = strings.Join(notes, "; ")
	err = e.Store.Commit(ctx, pending, func(t *badger.Txn) error {
		return commitBackupRecord(catalog.Wrap(t), &b, decision, e.Now())
	})
	if err != nil {
		abort()
		return catalog.Backup{}, err
	}
	committed = true
	return b, nil
}

// commitBackupRecord writes the backup and the IR side effects in the
// transaction that also makes its maps visible.
func commitBackupRecord(tx *catalog.Txn, b *catalog.Backup, d catalog.TypeDecision, now time.Time) error {
	if b.Name == "" {
		name, err := tx.GeneratedBackupName(b.Project, b.ServerID, b.Trigger, b.ID)
		if err != nil {
			return err
		}
		b.Name = name
	} else if taken, err := tx.BackupNameTaken(b.Project, b.ServerID, b.Name); err != nil {
		return err
	} else if taken {
		return fmt.Errorf("%w: server %s already has a backup named %q", catalog.ErrConflict, b.ServerName, b.Name)
	}
	if err := tx.PutBackup(*b); err != nil {
		return err
	}
	if d.EnablesIR {
		p, err := tx.Project(b.Project)
		if err != nil {
			return err
		}
		if !p.IREnabled() {
			p.IREnabledAt = now.UTC()
			if err := tx.PutProject(p); err != nil {
				return err
			}
		}
	}
	s, err := tx.Server(b.Project, b.ServerID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil // the server was removed meanwhile; the backup stays
	}
	if err != nil {
		return err
	}
	if b.Trigger == catalog.TriggerAuto {
		s.HadAutoBackup = true
	}
	if d.MarksManualFull {
		s.ManualFullAfterIR = true
	}
	for i := range s.Disks {
		for _, bd := range b.Disks {
			if bd.Name == s.Disks[i].Name {
				s.Disks[i].Size = bd.Size
				s.Disks[i].LastBackup = b.ID
			}
		}
	}
	return tx.PutServer(s)
}

// RestoreTargets restores the listed disks of a backup to their targets
// (normal restore). progress receives bytes done and total over all disks.
func (e *Engine) RestoreTargets(ctx context.Context, r catalog.Restore, progress func(done, total int64)) error {
	b, err := e.readBackup(r.Project, r.BackupID)
	if err != nil {
		return err
	}
	release := e.Acquire(b.ID)
	defer release()
	var total, before int64
	vols := make([]*blockstore.Volume, len(r.Targets))
	defer func() {
		for _, v := range vols {
			if v != nil {
				v.Close()
			}
		}
	}()
	for i, t := range r.Targets {
		if err := e.CheckTarget(t.Target); err != nil {
			return err
		}
		d, ok := diskOf(b, t.Disk)
		if !ok {
			return fmt.Errorf("%w: backup %s has no disk %s", catalog.ErrInvalid, b.Name, t.Disk)
		}
		id, err := blockstore.ParseMapID(d.MapID)
		if err != nil {
			return err
		}
		if vols[i], err = e.Store.OpenVolume(id); err != nil {
			return fmt.Errorf("backup %s disk %s: %w", b.Name, d.Name, err)
		}
		total += d.Size
	}
	for i, t := range r.Targets {
		_, err := restore.ToTarget(ctx, vols[i], t.Target, restore.Options{
			Force: r.Force,
			Progress: func(done, _ int64) {
				if progress != nil {
					progress(before+done, total)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("backup %s disk %s: %w", b.Name, t.Disk, err)
		}
		before += vols[i].Size()
	}
	return nil
}

func (e *Engine) readBackup(project, id string) (catalog.Backup, error) {
	var b catalog.Backup
	err := e.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(project, id)
		return err
	})
	if err != nil {
		return b, err
	}
	if b.Status != catalog.StatusAvailable {
		return b, fmt.Errorf("%w: backup %s is %s", catalog.ErrConflict, b.Name, b.Status)
	}
	return b, nil
}

func diskOf(b catalog.Backup, name string) (catalog.BackupDisk, bool) {
	for _, d := range b.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return catalog.BackupDisk{}, false
}

// CheckTarget refuses restore targets that would damage the appliance:
// the store's files, the daemon's sockets, or a relative path.
func (e *Engine) CheckTarget(target string) error {
	if !filepath.IsAbs(target) {
		return fmt.Errorf("%w: restore target %q: use an absolute path", catalog.ErrInvalid, target)
	}
	clean := filepath.Clean(target)
	if real, err := filepath.EvalSymlinks(filepath.Dir(clean)); err == nil {
		clean = filepath.Join(real, filepath.Base(clean))
	}
	for _, p := range e.ProtectedPaths {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if rel, err := filepath.Rel(p, clean); err == nil && (rel == "." || (!strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel))) {
			return fmt.Errorf("%w: restore target %s is inside the appliance's own data (%s)", catalog.ErrInvalid, target, p)
		}
	}
	if fi, err := os.Lstat(clean); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return fmt.Errorf("%w: restore target %s is a socket", catalog.ErrInvalid, target)
	}
	return nil
}
