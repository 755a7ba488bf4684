package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/fusefs"
	"csbs/instant"
)

// fuseTree shows Enhanced backups from the catalog, narrowed to a
// project (or every project), a server and a backup.
type fuseTree struct {
	d                       *Daemon
	project, server, backup string // ids/names; "" = no filter

	// The kernel releases a file handle asynchronously after a loop
	// device or a reader closes it; the mount's owner closes what is left
	// once the mount is gone, so that the backup is free at once.
	mu     sync.Mutex
	nextID int
	open   map[int]func()
}

// track registers a closer and returns one that runs it at most once.
func (t *fuseTree) track(closeFn func()) func() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = map[int]func(){}
	}
	id := t.nextID
	t.nextID++
	var once sync.Once
	wrapped := func() {
		once.Do(func() {
			t.mu.Lock()
			delete(t.open, id)
			t.mu.Unlock()
			closeFn()
		})
	}
	t.open[id] = wrapped
	return wrapped
}

// closeAll closes every handle still open; called after unmount.
func (t *fuseTree) closeAll() {
	t.mu.Lock()
	var fns []func()
	for _, fn := range t.open {
		fns = append(fns, fn)
	}
	t.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

var _ fusefs.Tree = (*fuseTree)(nil)

func (t *fuseTree) List(ctx context.Context, path []string) ([]fusefs.Entry, error) {
	var out []fusefs.Entry
	err := t.d.cat.View(func(tx *catalog.Txn) error {
		if len(path) == 0 {
			ps, err := tx.Projects()
			for _, p := range ps {
				if t.project == "" || t.project == p.ID {
					out = append(out, fusefs.Entry{Name: p.Name, Mtime: p.Created})
				}
			}
			return err
		}
		p, err := tx.ProjectByName(path[0])
		if err != nil || (t.project != "" && p.ID != t.project) {
			return catalog.ErrNotFound
		}
		bs, err := tx.Backups(p.ID, catalog.BackupFilter{Type: catalog.TypeEnhanced})
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, b := range bs {
			if b.Status != catalog.StatusAvailable || (t.server != "" && b.ServerID != t.server) || (t.backup != "" && b.ID != t.backup) {
				continue
			}
			switch len(path) {
			case 1:
				if !seen[b.ServerName] {
					seen[b.ServerName] = true
					out = append(out, fusefs.Entry{Name: b.ServerName, Mtime: b.Created})
				}
			case 2:
				if b.ServerName == path[1] {
					out = append(out, fusefs.Entry{Name: b.Name, Mtime: b.Created})
				}
			case 3:
				if b.ServerName == path[1] && b.Name == path[2] {
					for _, d := range b.Disks {
						out = append(out, fusefs.Entry{Name: d.Name, Size: d.Size, Mtime: b.Created})
					}
				}
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b fusefs.Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, err
}

func (t *fuseTree) Open(ctx context.Context, path []string) (fusefs.Image, func(), error) {
	if len(path) != 4 {
		return nil, nil, catalog.ErrNotFound
	}
	var b catalog.Backup
	err := t.d.cat.View(func(tx *catalog.Txn) error {
		p, err := tx.ProjectByName(path[0])
		if err != nil || (t.project != "" && p.ID != t.project) {
			return catalog.ErrNotFound
		}
		bs, err := tx.Backups(p.ID, catalog.BackupFilter{Type: catalog.TypeEnhanced})
		for _, x := range bs {
			if x.ServerName == path[1] && x.Name == path[2] {
				b = x
				return nil
			}
		}
		if err != nil {
			return err
		}
		return catalog.ErrNotFound
	})
	if err != nil {
		return nil, nil, err
	}
	for _, d := range b.Disks {
		if d.Name != path[3] {
			continue
		}
		id, err := blockstore.ParseMapID(d.MapID)
		if err != nil {
			return nil, nil, err
		}
		release := t.d.engine.Acquire(b.ID)
		vol, err := t.d.store.OpenVolume(id)
		if err != nil {
			release()
			return nil, nil, err
		}
		return countingImage{Image: vol, d: t.d}, t.track(func() { vol.Close(); release() }), nil
	}
	return nil, nil, catalog.ErrNotFound
}

// countingImage counts FUSE reads for the metrics.
type countingImage struct {
	fusefs.Image
	d *Daemon
}

func (v countingImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.Image.ReadAt(p, off)
	v.d.metrics.FUSEReads.Inc()
	v.d.metrics.FUSEReadBytes.Add(float64(n))
	return n, err
}

// mounts keeps the daemon's FUSE mounts and browse (loop) mounts.
type mounts struct {
	d  *Daemon
	mu sync.Mutex
	m  map[string]*mounted // by mount path
	br map[string]*browsed // by browse path
}

type mounted struct {
	rec  catalog.MountRecord
	m    *fusefs.Mount
	tree *fuseTree
}

// unmount unmounts the FUSE file system, retrying while the kernel still
// holds a handle that is being released, then frees what is left open.
func (e *mounted) unmount(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := e.m.Unmount()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.tree.closeAll()
	return nil
}

// detachLoop detaches a loop device and waits until the kernel has let
// go of its backing file (losetup -d only marks it for autoclear).
func detachLoop(loop string) {
	exec.Command("losetup", "-d", loop).Run()
	backing := filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(backing); err != nil {
			return
		}
	}
}

type browsed struct {
	rec  catalog.MountRecord
	loop string
	fuse string // internal FUSE mount holding the image
}

func newMounts(d *Daemon) *mounts {
	return &mounts{d: d, m: map[string]*mounted{}, br: map[string]*browsed{}}
}

// checkPath checks a mount or browse path that c names, creates it if
// needed, and returns it cleaned together with its real location, where
// the mount goes. The path is checked before the directory is made and
// again after, on the real path, right before the mount: a component
// swapped for a symlink in between is caught.
func (ms *mounts) checkPath(c access.Caller, path string) (string, string, error) {
	path, err := ms.d.engine.CheckMountPath(c, path)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return "", "", fmt.Errorf("%w: mount path %s: %v", catalog.ErrInvalid, path, err)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", "", fmt.Errorf("%w: mount path %s: %v", catalog.ErrInvalid, path, err)
	}
	if err := ms.d.engine.CheckMountReal(c, path, real); err != nil {
		return "", "", err
	}
	fi, err := os.Lstat(real)
	if err != nil || !fi.IsDir() {
		return "", "", fmt.Errorf("%w: mount path %s is not a directory", catalog.ErrInvalid, path)
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return "", "", fmt.Errorf("%w: mount path %s: %v", catalog.ErrInvalid, path, err)
	}
	if len(entries) > 0 {
		return "", "", fmt.Errorf("%w: mount path %s is not empty", catalog.ErrInvalid, path)
	}
	return path, real, nil
}

// Mount mounts a (narrowed) tree at rec.Path and records it.
func (ms *mounts) Mount(rec catalog.MountRecord) (catalog.MountRecord, error) {
	c, err := ms.d.engine.Caller(rec.Project, rec.ByAdmin)
	if err != nil {
		return rec, err
	}
	ms.mu.Lock()
	_, busy := ms.m[filepath.Clean(rec.Path)]
	ms.mu.Unlock()
	if busy {
		return rec, fmt.Errorf("%w: %s is already a csbs mount", catalog.ErrConflict, rec.Path)
	}
	path, real, err := ms.checkPath(c, rec.Path)
	if err != nil {
		return rec, err
	}
	rec.Path = path
	if err := ms.mount(rec, real); err != nil {
		return rec, err
	}
	return rec, ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.PutMountRecord(rec) })
}

// mount mounts the tree of rec at real (rec.Path with its symlinks
// resolved, as checked) and registers it under rec.Path.
func (ms *mounts) mount(rec catalog.MountRecord, real string) error {
	tree := &fuseTree{d: ms.d, project: rec.Project, server: rec.Server, backup: rec.Backup}
	m, err := fusefs.MountTree(real, tree, rec.Project)
	if err != nil {
		return fmt.Errorf("mount %s: %w", rec.Path, err)
	}
	ms.mu.Lock()
	ms.m[rec.Path] = &mounted{rec: rec, m: m, tree: tree}
	ms.mu.Unlock()
	return nil
}

// Unmount removes a mount of the project ("" = any).
func (ms *mounts) Unmount(project, path string) error {
	path = filepath.Clean(path)
	ms.mu.Lock()
	e, ok := ms.m[path]
	if ok && project != "" && e.rec.Project != project {
		ok = false
	}
	ms.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s is not a csbs mount: %w", path, catalog.ErrNotFound)
	}
	if err := e.unmount(0); err != nil {
		return fmt.Errorf("%w: unmount %s: %v (is a file open there?)", catalog.ErrConflict, path, err)
	}
	ms.mu.Lock()
	delete(ms.m, path)
	ms.mu.Unlock()
	return ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(path) })
}

// List returns a project's mounts ("" = all).
func (ms *mounts) List(project string) []catalog.MountRecord {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := []catalog.MountRecord{}
	for key, e := range ms.m {
		if strings.HasPrefix(key, "\x00") {
			continue // the FUSE mount behind a browse mount
		}
		if project == "" || e.rec.Project == project {
			out = append(out, e.rec)
		}
	}
	for _, b := range ms.br {
		if project == "" || b.rec.Project == project {
			out = append(out, b.rec)
		}
	}
	slices.SortFunc(out, func(a, b catalog.MountRecord) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// Browse loop-mounts one disk of a backup read-only at path, so that
// single files can be copied out.
func (ms *mounts) Browse(b catalog.Backup, disk, path string, byAdmin bool) (catalog.MountRecord, error) {
	if os.Geteuid() != 0 {
		return catalog.MountRecord{}, fmt.Errorf("%w: browsing needs the daemon to run as root (loop devices and mount)", catalog.ErrInvalid)
	}
	if err := instant.CheckServable(b); err != nil {
		return catalog.MountRecord{}, err
	}
	if _, _, err := instant.DiskMap(b, disk); err != nil {
		return catalog.MountRecord{}, err
	}
	c, err := ms.d.engine.Caller(b.Project, byAdmin)
	if err != nil {
		return catalog.MountRecord{}, err
	}
	path, real, err := ms.checkPath(c, path)
	if err != nil {
		return catalog.MountRecord{}, err
	}
	internal := filepath.Join(ms.d.cfg.DataDir, "browse", b.ID+"-"+disk+"-"+filepath.Base(path))
	rec := catalog.MountRecord{Path: path, Project: b.Project, Backup: b.ID, Disk: disk, Browse: true, Internal: internal, ByAdmin: byAdmin}
	if err := ms.browse(rec, b, real); err != nil {
		return rec, err
	}
	return rec, ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.PutMountRecord(rec) })
}

func (ms *mounts) browse(rec catalog.MountRecord, b catalog.Backup, real string) error {
	fusefs.CleanStale(rec.Internal)
	if err := os.MkdirAll(rec.Internal, 0o700); err != nil {
		return err
	}
	tree := &fuseTree{d: ms.d, project: b.Project, backup: b.ID}
	m, err := fusefs.MountTree(rec.Internal, tree, "browse")
	if err != nil {
		return fmt.Errorf("mount backup image: %w", err)
	}
	inner := &mounted{rec: rec, m: m, tree: tree}
	var projectName string
	_ = ms.d.cat.View(func(tx *catalog.Txn) error {
		p, err := tx.Project(b.Project)
		projectName = p.Name
		return err
	})
	img := filepath.Join(rec.Internal, projectName, b.ServerName, b.Name, rec.Disk+".img")
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", "--partscan", img).CombinedOutput()
	if err != nil {
		inner.unmount(5 * time.Second)
		return fmt.Errorf("loop device for %s: %v: %s", img, err, strings.TrimSpace(string(out)))
	}
	loop := strings.TrimSpace(string(out))
	// Partitions first (p1, p2, ...), then the whole disk.
	cands, _ := filepath.Glob(loop + "p*")
	slices.Sort(cands)
	cands = append(cands, loop)
	var tried []string
	for _, dev := range cands {
		for _, opts := range []string{"ro,noload", "ro,norecovery", "ro"} {
			if o, err := exec.Command("mount", "-o", opts, dev, real).CombinedOutput(); err == nil {
				ms.mu.Lock()
				ms.br[rec.Path] = &browsed{rec: rec, loop: loop, fuse: rec.Internal}
				ms.m["\x00"+rec.Internal] = inner
				ms.mu.Unlock()
				return nil
			} else {
				tried = append(tried, fmt.Sprintf("%s (%s): %s", dev, opts, strings.TrimSpace(string(o))))
			}
		}
	}
	detachLoop(loop)
	inner.unmount(5 * time.Second)
	return fmt.Errorf("%w: no mountable file system found on disk %s of backup %s; tried %s", catalog.ErrInvalid, rec.Disk, b.Name, strings.Join(tried, "; "))
}

// Unbrowse undoes Browse.
func (ms *mounts) Unbrowse(project, path string) error {
	path = filepath.Clean(path)
	ms.mu.Lock()
	b, ok := ms.br[path]
	if ok && project != "" && b.rec.Project != project {
		ok = false
	}
	ms.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s is not a browse mount: %w", path, catalog.ErrNotFound)
	}
	if out, err := exec.Command("umount", path).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: unmount %s: %s", catalog.ErrConflict, path, strings.TrimSpace(string(out)))
	}
	detachLoop(b.loop)
	ms.mu.Lock()
	inner := ms.m["\x00"+b.fuse]
	delete(ms.m, "\x00"+b.fuse)
	delete(ms.br, path)
	ms.mu.Unlock()
	if inner != nil {
		if err := inner.unmount(5 * time.Second); err != nil {
			ms.d.log.Warn("unmount browse image; forcing a lazy unmount", "path", b.fuse, "err", err)
			syscallUnmountLazy(b.fuse)
			inner.tree.closeAll()
		}
	}
	os.Remove(b.fuse)
	return ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(path) })
}

// recover cleans mounts a crashed daemon left and mounts them again.
func (ms *mounts) recover() {
	if mp := ms.d.cfg.FUSE.Mountpoint; mp != "" {
		if cleaned, err := fusefs.CleanStale(mp); err != nil {
			ms.d.log.Warn("stale FUSE mount", "path", mp, "err", err)
		} else if cleaned {
			ms.d.log.Info("cleaned stale FUSE mount", "path", mp)
		}
		if err := os.MkdirAll(mp, 0o755); err == nil {
			if err := ms.mount(catalog.MountRecord{Path: mp}, mp); err != nil {
				ms.d.log.Error("fuse.mountpoint", "path", mp, "err", err)
			}
		}
	}
	var recs []catalog.MountRecord
	_ = ms.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		recs, err = tx.MountRecords()
		return err
	})
	for _, rec := range recs {
		if rec.Browse {
			// Loop mounts do not survive the daemon: undo what is left.
			exec.Command("umount", "-l", rec.Path).Run()
			fusefs.CleanStale(rec.Internal)
			_ = ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(rec.Path) })
			continue
		}
		if cleaned, _ := fusefs.CleanStale(rec.Path); cleaned {
			ms.d.log.Info("cleaned stale FUSE mount", "path", rec.Path)
		}
		// The host access may have changed (a grant removed, a path
		// swapped for a symlink): mount again only what is still allowed.
		c, err := ms.d.engine.Caller(rec.Project, rec.ByAdmin)
		real := ""
		if err == nil {
			_, real, err = ms.checkPath(c, rec.Path)
		}
		if err == nil {
			err = ms.mount(rec, real)
		}
		if err != nil {
			ms.d.log.Warn("mount not restored", "path", rec.Path, "err", err)
			_ = ms.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(rec.Path) })
		}
	}
}

// shutdown unmounts everything; records stay so that mounts come back.
func (ms *mounts) shutdown() {
	ms.mu.Lock()
	var brs []*browsed
	for _, b := range ms.br {
		brs = append(brs, b)
	}
	ms.mu.Unlock()
	for _, b := range brs {
		exec.Command("umount", "-l", b.rec.Path).Run()
		detachLoop(b.loop)
	}
	ms.mu.Lock()
	all := ms.m
	ms.m = map[string]*mounted{}
	ms.br = map[string]*browsed{}
	ms.mu.Unlock()
	for _, e := range all {
		if err := e.unmount(time.Second); err != nil {
			ms.d.log.Warn("unmount at shutdown; forcing a lazy unmount", "path", e.rec.Path, "err", err)
			syscallUnmountLazy(e.rec.Path)
			e.tree.closeAll()
		}
	}
}

func syscallUnmountLazy(path string) {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		exec.Command("fusermount3", "-u", "-z", path).Run()
	}
}
