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
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"csbs/internal/kv"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/nbd"
	"csbs/qemu"
	"csbs/restore"
	"csbs/source"
)

// Engine runs backups and restores.
type Engine struct {
	Store   *blockstore.Store
	Catalog *catalog.Catalog
	Now     func() time.Time
	Log     *slog.Logger
	// Access decides which host paths a caller may name (disk sources,
	// restore targets, mount paths); nil refuses every host path.
	Access *access.Rules

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

// Caller is who named a path recorded for a project: the admin token
// or a token of that project, whose grants are configured by name.
func (e *Engine) Caller(projectID string, byAdmin bool) (access.Caller, error) {
	var p catalog.Project
	err := e.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		p, err = tx.Project(projectID)
		return err
	})
	if err != nil {
		return access.Caller{}, fmt.Errorf("host access of project %s: %w", projectID, err)
	}
	return access.Caller{Admin: byAdmin, Project: p.Name}, nil
}

func (e *Engine) rules() *access.Rules {
	if e.Access == nil {
		return &access.Rules{Protected: []string{"/"}} // nothing is allowed
	}
	return e.Access
}

// checkNamed is the request-time check of a host path: absolute,
// resolved as far as it exists, and allowed for c. Refusing here, before
// anything is opened, also keeps a project token from learning whether a
// path outside its grants exists.
func (e *Engine) checkNamed(c access.Caller, u access.Use, path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%w: %s %q: use an absolute path", catalog.ErrInvalid, u, path)
	}
	path = filepath.Clean(path)
	real, err := access.Resolve(path)
	if err != nil {
		// Say why only to a caller who may use the path as written; to
		// others, the refusal they would get anyway.
		if err := e.rules().CheckPath(c, u, path, path); err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: %s %s: %v", access.ErrDenied, u, path, err)
	}
	return path, e.rules().CheckPath(c, u, path, real)
}

// SourceGuard is the open-time check of a disk source named by c: the
// real path of the opened file or socket, or the host of an nbd:// URI.
func (e *Engine) SourceGuard(c access.Caller, spec string) source.Guard {
	return func(l source.Location) error {
		if l.Addr != "" {
			return e.rules().CheckNBDHost(c, spec, l.Addr)
		}
		named := l.Path
		if filepath.IsAbs(spec) {
			named = spec // an image or device path, as the server records it
		}
		return e.rules().CheckPath(c, access.Source, named, l.Path)
	}
}

// CheckSource validates a disk source that c names for a new server and
// returns it cleaned, with its size: the path (or an nbd+unix URI's
// socket) must be allowed for c and name a regular file or block device
// (a socket), an nbd:// host must be allowed for c, and the source must
// open. The same checks run again whenever a backup opens it.
func (e *Engine) CheckSource(ctx context.Context, c access.Caller, spec string) (string, int64, error) {
	if qemu.IsURI(spec) {
		return e.checkVMSource(ctx, c, spec)
	}
	if strings.Contains(spec, "://") {
		t, err := nbd.ParseURI(spec)
		if err != nil {
			return "", 0, fmt.Errorf("%w: disk source: %v", catalog.ErrInvalid, err)
		}
		if t.Network == "unix" {
			if _, err := e.checkNamed(c, access.Source, t.Address); err != nil {
				return "", 0, err
			}
		} else if err := e.rules().CheckNBDHost(c, spec, t.Address); err != nil {
			return "", 0, err
		}
	} else {
		var err error
		if spec, err = e.checkNamed(c, access.Source, spec); err != nil {
			return "", 0, err
		}
	}
	size, err := source.Validate(ctx, spec, e.SourceGuard(c, spec))
	if errors.Is(err, access.ErrDenied) {
		return "", 0, err
	}
	if err != nil {
		return "", 0, fmt.Errorf("%w: disk source %s: %v", catalog.ErrInvalid, spec, err)
	}
	return spec, size, nil
}

// TargetGuard is the open-time check of a restore target named by c.
func (e *Engine) TargetGuard(c access.Caller) func(real string) error {
	return func(real string) error { return e.rules().CheckPath(c, access.Target, real, real) }
}

// CheckTarget checks a restore target that c names, as the restore will
// when it opens it: allowed for c, in an existing directory, and a new
// file, an existing regular file or a block device. It returns the
// target cleaned.
func (e *Engine) CheckTarget(c access.Caller, target string) (string, error) {
	return e.checkTarget(c, target, func(t string) error { return restore.Inspect(t, e.TargetGuard(c)) })
}

// CheckRestoreTarget is CheckTarget for a normal restore of a disk of
// size bytes: it also refuses a target that holds data (without force),
// a device too small for the disk or in use, which the restore's job
// would otherwise find only when it starts.
func (e *Engine) CheckRestoreTarget(c access.Caller, target string, size int64, force bool) (string, error) {
	return e.checkTarget(c, target, func(t string) error { return restore.InspectWrite(t, size, force, e.TargetGuard(c)) })
}

func (e *Engine) checkTarget(c access.Caller, target string, inspect func(string) error) (string, error) {
	target, err := e.checkNamed(c, access.Target, target)
	if err != nil {
		return "", err
	}
	err = inspect(target)
	if errors.Is(err, access.ErrDenied) {
		return "", err
	}
	if err != nil {
		return "", fmt.Errorf("%w: restore target %s: %v", catalog.ErrInvalid, target, err)
	}
	return target, nil
}

// CheckMountPath checks a mount or browse path that c names and returns
// it cleaned. The mount code checks again (CheckMountReal) after
// creating the directory, right before mounting, on its real location.
func (e *Engine) CheckMountPath(c access.Caller, path string) (string, error) {
	return e.checkNamed(c, access.Mount, path)
}

// CheckMountReal is the second check of a mount path: real is path with
// every symlink resolved once the directory exists.
func (e *Engine) CheckMountReal(c access.Caller, path, real string) error {
	return e.rules().CheckPath(c, access.Mount, path, real)
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
		c := access.Caller{Admin: d.ByAdmin, Project: project.Name}
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
			if err := openNBDTracked(ctx, d, bitmap, e.SourceGuard(c, d.Source), parents[i], &reads[i]); err != nil {
				return catalog.Backup{}, fmt.Errorf("server %s disk %s: %w", server.Name, d.Name, err)
			}
		default:
			src, err := source.Open(ctx, d.Source, e.SourceGuard(c, d.Source))
			if err != nil {
				return catalog.Backup{}, fmt.Errorf("server %s disk %s: %w", server.Name, d.Name, err)
			}
			reads[i].src = src
		}
	}
	started := time.Now()
	var fixed time.Duration // until a live VM's point in time is fixed and exported
	if len(vmDisks) > 0 {
		var err error
		c := access.Caller{Admin: server.Disks[vmDisks[0]].ByAdmin, Project: project.Name}
		if sess, unlockVM, err = e.openVM(ctx, c, server, backupID, vmDisks, reads, parents); err != nil {
			return catalog.Backup{}, err
		}
		fixed = time.Since(started)
	}
	var total int64
	for _, r := range reads {
		total += r.src.Size()
		if n, ok := r.src.(*source.NBD); ok {
			// Read-ahead of exactly the blocks the ingest will read,
			// many requests in flight while it hashes and stores.
			n.Prefetch(int64(e.Store.BlockSize()), r.parent != nil, 16<<20)
		}
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
			if sess != nil && sess.GoneWithin(ctx, 2*time.Second) != nil {
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
	// The commit writes the backup's records; like every catalog write it
	// keeps the free-space reserve.
	if err := e.Catalog.CheckSpace(catalog.WriteGrow); err != nil {
		abort()
		return catalog.Backup{}, fmt.Errorf("commit backup of server %s: %w", server.Name, err)
	}
	err = e.Store.Commit(ctx, pending, func(t *kv.Txn) error {
		return commitBackupRecord(catalog.Wrap(t), &b, decision, e.Now())
	})
	if err != nil {
		abort()
		return catalog.Backup{}, err
	}
	committed = true
	if sess != nil {
		e.Log.Info("live VM backup saved", "server", server.Name, "backup", b.ID, "consistency", b.Consistency,
			"point_in_time", fixed, "read_and_commit", time.Since(started)-fixed)
	}
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
	c, err := e.Caller(r.Project, r.ByAdmin)
	if err != nil {
		return err
	}
	var total int64
	vols := make([]*blockstore.Volume, len(r.Targets))
	defer func() {
		for _, v := range vols {
			if v != nil {
				v.Close()
			}
		}
	}()
	for i, t := range r.Targets {
		if _, err := e.CheckTarget(c, t.Target); err != nil {
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
		// The disks are written at once, so every target is judged
		// before any is written: a full one refuses the whole restore.
		if err := restore.InspectWrite(t.Target, d.Size, r.Force, e.TargetGuard(c)); err != nil {
			return fmt.Errorf("restore to %s: %w", t.Target, err)
		}
		if vols[i], err = e.Store.OpenVolume(id); err != nil {
			return fmt.Errorf("backup %s disk %s: %w", b.Name, d.Name, err)
		}
		total += d.Size
	}
	// Every disk at once: their workers share the CPUs and the store's
	// memory budget.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make([]atomic.Int64, len(r.Targets))
	var progressMu sync.Mutex
	var wg sync.WaitGroup
	for i, t := range r.Targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := restore.ToTarget(ctx, vols[i], t.Target, restore.Options{
				Force:   r.Force,
				Check:   e.TargetGuard(c),
				Workers: e.Store.Workers(),
				Budget:  e.Store.Budget(),
				Progress: func(d, _ int64) {
					done[i].Store(d)
					if progress == nil {
						return
					}
					var sum int64
					for k := range done {
						sum += done[k].Load()
					}
					progressMu.Lock()
					progress(sum, total)
					progressMu.Unlock()
				},
			})
			if err != nil {
				cancel(fmt.Errorf("backup %s disk %s: %w", b.Name, t.Disk, err))
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
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
