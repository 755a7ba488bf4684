package engine

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/fsinfo"
	"csbs/qemu"
	"csbs/source"
)

// diskRead is how one disk of a backup is read: its open source and,
// with changed-block tracking, the parent map whose blocks stand in for
// the unchanged ones.
type diskRead struct {
	src source.Disk
	// tracks: the source can report changed blocks (a live VM disk, or
	// an NBD URI that names a dirty bitmap); only then are bitmap,
	// parent and fullRead meaningful.
	tracks   bool
	bitmap   string
	parent   *blockstore.MapInfo // non-nil: read only changed blocks
	parentID string
	fullRead string // why the whole disk is read (tracks, no parent)
}

// parentCandidate is a backup that may serve as a changed-block parent.
type parentCandidate struct {
	backup catalog.Backup
	disk   catalog.BackupDisk
	info   blockstore.MapInfo
}

// cbtParent finds the parent for changed-block tracking of disk d: only
// the last backup that saved the disk qualifies (a bitmap tracks changes
// since that backup's point in time and says nothing about older ones),
// and only if it is available, undamaged, recorded a bitmap and its map
// is readable. It returns the reason when there is none. A found parent
// is marked in use (release it with the returned func) so that it cannot
// be deleted while the ingest takes blocks from it.
func (e *Engine) cbtParent(project string, d catalog.Disk, job catalog.Job) (parentCandidate, func(), string) {
	none := func() {}
	if job.Full {
		return parentCandidate{}, none, "full backup requested (--full)"
	}
	if d.LastBackup == "" {
		return parentCandidate{}, none, "no earlier backup of this disk"
	}
	release := e.Acquire(d.LastBackup)
	// Read after Acquire: a deletion that passed its in-use check before
	// is then visible, and one after it is refused.
	var b catalog.Backup
	err := e.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(project, d.LastBackup)
		return err
	})
	fail := func(reason string) (parentCandidate, func(), string) {
		release()
		return parentCandidate{}, none, reason
	}
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return fail(fmt.Sprintf("the last backup of this disk (%s) was deleted", d.LastBackup))
	case err != nil:
		return fail(fmt.Sprintf("the last backup of this disk (%s) cannot be read: %v", d.LastBackup, err))
	case b.Status != catalog.StatusAvailable:
		return fail(fmt.Sprintf("the last backup %s is %s", b.Name, b.Status))
	case b.Damaged:
		return fail(fmt.Sprintf("the last backup %s is damaged (scrub found bad blocks)", b.Name))
	}
	bd, ok := diskOf(b, d.Name)
	if !ok {
		return fail(fmt.Sprintf("the last backup %s has no disk %s", b.Name, d.Name))
	}
	if bd.Bitmap == "" {
		return fail(fmt.Sprintf("the last backup %s has no dirty bitmap for this disk", b.Name))
	}
	id, err := blockstore.ParseMapID(bd.MapID)
	if err != nil {
		return fail(fmt.Sprintf("the last backup %s has a bad map id: %v", b.Name, err))
	}
	info, err := e.Store.MapInfo(id)
	if err != nil {
		return fail(fmt.Sprintf("the block map of the last backup %s cannot be read: %v", b.Name, err))
	}
	return parentCandidate{backup: b, disk: bd, info: info}, release, ""
}

// lastBitmap returns the bitmap recorded by the disk's last backup ("" if
// it is gone or has none).
func (e *Engine) lastBitmap(project string, d catalog.Disk) string {
	if d.LastBackup == "" {
		return ""
	}
	var name string
	_ = e.Catalog.View(func(tx *catalog.Txn) error {
		b, err := tx.Backup(project, d.LastBackup)
		if err == nil {
			if bd, ok := diskOf(b, d.Name); ok {
				name = bd.Bitmap
			}
		}
		return err
	})
	return name
}

// bitmapPrefix names csbs's dirty bitmaps of one disk of one server in a
// VM; the suffix is the backup id.
func bitmapPrefix(serverID, disk string) string {
	return fmt.Sprintf("csbs-%s-%s-", serverID, disk)
}

// lockVM serializes backups of one VM (by QMP socket): QEMU has one NBD
// server and its monitor one client.
func (e *Engine) lockVM(ctx context.Context, socket string) (func(), error) {
	e.mu.Lock()
	if e.vmLocks == nil {
		e.vmLocks = map[string]chan struct{}{}
	}
	ch, ok := e.vmLocks[socket]
	if !ok {
		ch = make(chan struct{}, 1)
		e.vmLocks[socket] = ch
	}
	e.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for another backup of the VM at %s: %w", socket, ctx.Err())
	}
}

// vmDir is where live VM sessions keep their files.
func (e *Engine) vmDir() (string, error) {
	if e.VMDir == "" {
		return "", errors.New("live VM backups need a work directory (Engine.VMDir)")
	}
	return e.VMDir, nil
}

// committed reports whether a backup record exists (a session's backup
// was saved before a crash interrupted its cleanup).
func (e *Engine) committed(id string) (bool, error) {
	found := false
	err := e.Catalog.View(func(tx *catalog.Txn) error {
		_, err := tx.BackupByID(id)
		if errors.Is(err, catalog.ErrNotFound) {
			return nil
		}
		found = err == nil
		return err
	})
	return found, err
}

// RecoverVMSessions undoes what interrupted live VM backups left in their
// VMs (the daemon calls it at start; a backup of a VM also calls it for
// that VM first).
func (e *Engine) RecoverVMSessions(ctx context.Context) error {
	dir, err := e.vmDir()
	if err != nil {
		return nil
	}
	sockets, err := qemu.Sockets(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range sockets {
		// Under the VM's lock no session of it is open: every record of
		// it is a leftover.
		unlock, err := e.lockVM(ctx, s)
		if err != nil {
			return err
		}
		errs = append(errs, qemu.Recover(ctx, dir, s, e.committed, e.Log))
		unlock()
	}
	return errors.Join(errs...)
}

// openVM opens the live VM disks of a server (indices idx into
// server.Disks, all on one QMP socket) in one session, and fills reads.
func (e *Engine) openVM(ctx context.Context, c access.Caller, server catalog.Server, backupID string, idx []int, reads []diskRead, parents []parentCandidate) (*qemu.Session, func(), error) {
	dir, err := e.vmDir()
	if err != nil {
		return nil, nil, err
	}
	var targets []qemu.Target
	for _, i := range idx {
		t, err := qemu.ParseURI(server.Disks[i].Source)
		if err != nil {
			return nil, nil, err
		}
		if len(targets) > 0 && t.Socket != targets[0].Socket {
			return nil, nil, fmt.Errorf("%w: server %s has disks in two VMs (%s and %s); one server is one VM", catalog.ErrInvalid, server.Name, targets[0].Socket, t.Socket)
		}
		targets = append(targets, t)
	}
	unlock, err := e.lockVM(ctx, targets[0].Socket)
	if err != nil {
		return nil, nil, err
	}
	if err := qemu.Recover(ctx, dir, targets[0].Socket, e.committed, e.Log); err != nil {
		unlock()
		return nil, nil, fmt.Errorf("server %s: earlier backup left objects in the VM that cannot be removed now: %w", server.Name, err)
	}
	opt := qemu.Options{Socket: targets[0].Socket, Agent: targets[0].Agent, Dir: filepath.Join(dir, backupID), ID: backupID, Log: e.Log, Open: e.socketOpener(c)}
	if e.hooks != nil {
		opt.AfterPointInTime = e.hooks.AfterPointInTime
	}
	for k, i := range idx {
		d := server.Disks[i]
		if t := targets[k].Agent; t != "" && t != targets[0].Agent {
			unlock()
			return nil, nil, fmt.Errorf("%w: server %s: disks name different guest agents", catalog.ErrInvalid, server.Name)
		}
		spec := qemu.DiskSpec{
			Name: d.Name, Ref: targets[k].Ref,
			NewBitmap:   bitmapPrefix(server.ID, d.Name) + backupID,
			StalePrefix: bitmapPrefix(server.ID, d.Name),
		}
		if p := parents[i]; p.backup.ID != "" {
			spec.ParentBitmap, spec.ParentSize = p.disk.Bitmap, p.disk.Size
		} else {
			spec.NoParentReason = reads[i].fullRead
			spec.KeepBitmap = e.lastBitmap(server.Project, d)
		}
		opt.Disks = append(opt.Disks, spec)
	}
	sess, err := qemu.Begin(ctx, opt)
	if err != nil {
		unlock()
		if errors.Is(err, qemu.ErrVMGone) {
			return nil, nil, fmt.Errorf("server %s: the VM stopped or crashed during the backup; nothing was saved: %w", server.Name, err)
		}
		return nil, nil, fmt.Errorf("server %s: %w", server.Name, err)
	}
	fail := func(err error) (*qemu.Session, func(), error) {
		for _, i := range idx {
			if reads[i].src != nil {
				reads[i].src.Close()
				reads[i].src = nil
			}
		}
		if cerr := sess.End(context.WithoutCancel(ctx), false); cerr != nil {
			e.Log.Warn("clean up VM after a failed backup", "server", server.Name, "err", cerr)
		}
		unlock()
		return nil, nil, err
	}
	for k, i := range idx {
		vd := sess.Disks()[k]
		r := &reads[i]
		r.tracks, r.bitmap = true, vd.Spec.NewBitmap
		bitmap := ""
		if vd.CBT {
			bitmap = vd.ChangedBitmap
		}
		// QEMU's socket in our own session dir: no caller named it.
		src, err := source.OpenNBDBitmap(ctx, sess.ExportURI(k), bitmap, nil)
		if err != nil {
			return fail(fmt.Errorf("server %s disk %s: read the VM's frozen disk: %w", server.Name, server.Disks[i].Name, err))
		}
		r.src = src
		switch {
		case !vd.CBT:
			r.fullRead = vd.FullReason
		case !src.HasBitmap():
			r.fullRead = "QEMU's export does not offer the changed-block bitmap"
		default:
			info := parents[i].info
			r.parent, r.parentID, r.fullRead = &info, parents[i].backup.ID, ""
		}
	}
	return sess, unlock, nil
}

// openNBDTracked opens an NBD source whose URI names a dirty bitmap and
// decides whether the bitmap may stand for the changes since the parent.
func openNBDTracked(ctx context.Context, d catalog.Disk, bitmap string, guard source.Guard, p parentCandidate, r *diskRead) error {
	src, err := source.OpenNBD(ctx, d.Source, guard)
	if err != nil {
		return err
	}
	r.src, r.tracks, r.bitmap = src, true, bitmap
	switch {
	case p.backup.ID == "":
		// r.fullRead says why already.
	case p.disk.Bitmap != bitmap:
		r.fullRead = fmt.Sprintf("the last backup %s was tracked by dirty bitmap %q, this source names %q", p.backup.Name, p.disk.Bitmap, bitmap)
	case !src.HasBitmap():
		r.fullRead = fmt.Sprintf("the NBD export does not offer qemu:dirty-bitmap:%s", bitmap)
	case src.Size() != p.disk.Size:
		r.fullRead = fmt.Sprintf("disk size changed from %d to %d bytes since the last backup", p.disk.Size, src.Size())
	default:
		info := p.info
		r.parent, r.parentID, r.fullRead = &info, p.backup.ID, ""
	}
	return nil
}

// nbdBitmap returns the dirty-bitmap=NAME of an NBD URI ("" if none).
func nbdBitmap(spec string) string {
	if !strings.HasPrefix(spec, "nbd://") && !strings.HasPrefix(spec, "nbd+unix://") {
		return ""
	}
	u, err := url.Parse(spec)
	if err != nil {
		return ""
	}
	return u.Query().Get(source.BitmapParam)
}

// socketOpener checks a QMP or guest agent socket that c named (or that
// QEMU reported for c's VM) the way disk sources are checked: the path
// is opened with O_PATH, must be a socket, and its real path must be
// allowed for c as a disk source; it is then dialed through that handle.
func (e *Engine) socketOpener(c access.Caller) qemu.Opener {
	return func(path string) (string, func(), error) {
		pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			unix.Close(pfd)
			return "", nil, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			unix.Close(pfd)
			return "", nil, fmt.Errorf("%s is %s, not a socket", path, fsinfo.Kind(st.Mode))
		}
		real, err := fsinfo.FDPath(pfd)
		if err == nil {
			err = e.rules().CheckPath(c, access.Source, path, real)
		}
		if err != nil {
			unix.Close(pfd)
			return "", nil, err
		}
		return fmt.Sprintf("/proc/self/fd/%d", pfd), func() { unix.Close(pfd) }, nil
	}
}

// checkVMSource validates a live VM disk source that c names: the QMP
// socket (and a named guest agent socket) must be allowed for c like a
// disk source path, the VM must answer on it and have the disk.
func (e *Engine) checkVMSource(ctx context.Context, c access.Caller, spec string) (string, int64, error) {
	t, err := qemu.ParseURI(spec)
	if err != nil {
		return "", 0, fmt.Errorf("%w: disk source: %v", catalog.ErrInvalid, err)
	}
	if _, err := e.checkNamed(c, access.Source, t.Socket); err != nil {
		return "", 0, err
	}
	if t.Agent != "" && t.Agent != "none" {
		if _, err := e.checkNamed(c, access.Source, t.Agent); err != nil {
			return "", 0, err
		}
	}
	unlock, err := e.lockVM(ctx, t.Socket)
	if err != nil {
		return "", 0, err
	}
	defer unlock()
	conn, err := qemu.DialWith(ctx, t.Socket, e.socketOpener(c))
	if errors.Is(err, access.ErrDenied) {
		return "", 0, err
	}
	if err != nil {
		return "", 0, fmt.Errorf("%w: disk source %s: %v", catalog.ErrInvalid, spec, err)
	}
	defer conn.Close()
	n, err := qemu.Resolve(ctx, conn, t.Ref)
	if err != nil {
		return "", 0, fmt.Errorf("%w: disk source %s: %v", catalog.ErrInvalid, spec, err)
	}
	return t.URI(), n.Size, nil
}

// DiscoverVM lists the disks of the running VM behind a QMP socket that
// c names, each with a ready source URI (server add --qmp, server
// discover).
func (e *Engine) DiscoverVM(ctx context.Context, c access.Caller, socket, agent string) ([]qemu.DiscoveredDisk, error) {
	if _, err := e.checkNamed(c, access.Source, socket); err != nil {
		return nil, err
	}
	if agent != "" && agent != "none" {
		if _, err := e.checkNamed(c, access.Source, agent); err != nil {
			return nil, err
		}
	}
	unlock, err := e.lockVM(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer unlock()
	disks, err := qemu.Discover(ctx, socket, agent, e.socketOpener(c))
	if errors.Is(err, access.ErrDenied) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", catalog.ErrInvalid, err)
	}
	return disks, nil
}

// ForgetVM removes the dirty bitmaps csbs keeps in a removed server's VM
// (best effort: a VM that is not running keeps them in its qcow2 images
// until removed by hand with block-dirty-bitmap-remove or qemu-img
// bitmap --remove).
func (e *Engine) ForgetVM(ctx context.Context, server catalog.Server) error {
	var project catalog.Project
	if err := e.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		project, err = tx.Project(server.Project)
		return err
	}); err != nil {
		return err
	}
	var errs []error
	for _, d := range server.Disks {
		caller := access.Caller{Admin: d.ByAdmin, Project: project.Name}
		t, err := qemu.ParseURI(d.Source)
		if err != nil {
			continue
		}
		if err := func() error {
			unlock, err := e.lockVM(ctx, t.Socket)
			if err != nil {
				return err
			}
			defer unlock()
			c, err := qemu.DialWith(ctx, t.Socket, e.socketOpener(caller))
			if err != nil {
				return err
			}
			defer c.Close()
			return qemu.RemoveBitmaps(ctx, c, t.Ref, bitmapPrefix(server.ID, d.Name))
		}(); err != nil {
			errs = append(errs, fmt.Errorf("server %s disk %s: remove csbs dirty bitmaps: %w", server.Name, d.Name, err))
		}
	}
	return errors.Join(errs...)
}
