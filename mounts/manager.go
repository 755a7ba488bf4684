package mounts

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"csbs/access"
	"csbs/catalog"
	"csbs/fusefs"
)

// Access checks the host paths that callers name (the engine).
type Access interface {
	// Caller is the caller a mount record names: its project's, or the
	// admin's when byAdmin.
	Caller(project string, byAdmin bool) (access.Caller, error)
	// CheckMountPath checks a mount path c names and returns it cleaned.
	CheckMountPath(c access.Caller, path string) (string, error)
	// CheckMountReal checks path again once resolved to real.
	CheckMountReal(c access.Caller, path, real string) error
}

// Config is what a Manager works with.
type Config struct {
	Catalog Catalog
	Disks   Disks
	Access  Access
	// DataDir holds the internal FUSE mounts behind browse mounts
	// (<DataDir>/browse).
	DataDir string
	// Mountpoint, when set, gets the whole tree at Recover (the config's
	// fuse.mountpoint); it has no record.
	Mountpoint string
	Log        *slog.Logger
}

// Manager keeps the FUSE mounts and browse (loop) mounts, and their
// catalog records. It implements the API's Mounter.
type Manager struct {
	cfg Config
	mu  sync.Mutex
	m   map[string]*mounted // by mount path; "\x00"+internal path for browse
	br  map[string]*browsed // by browse path
}

type mounted struct {
	rec   catalog.MountRecord
	m     *fusefs.Mount
	tree  *Tree
	watch context.CancelFunc
}

// unmount unmounts the FUSE file system, retrying while the kernel
// still holds a handle that is being released, then frees what is left
// open.
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
	e.watch()
	e.tree.closeAll()
	return nil
}

// forget frees what a mount holds after a lazy unmount.
func (e *mounted) forget() {
	e.watch()
	e.tree.closeAll()
}

// NewManager returns a manager; call Recover once at start.
func NewManager(cfg Config) *Manager {
	return &Manager{cfg: cfg, m: map[string]*mounted{}, br: map[string]*browsed{}}
}

// checkPath checks a mount or browse path that c names, creates it if
// needed, and returns it cleaned together with its real location, where
// the mount goes. The path is checked before the directory is made and
// again after, on the real path, right before the mount: a component
// swapped for a symlink in between is caught.
func (ms *Manager) checkPath(c access.Caller, path string) (string, string, error) {
	path, err := ms.cfg.Access.CheckMountPath(c, path)
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
	if err := ms.cfg.Access.CheckMountReal(c, path, real); err != nil {
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
func (ms *Manager) Mount(rec catalog.MountRecord) (catalog.MountRecord, error) {
	c, err := ms.cfg.Access.Caller(rec.Project, rec.ByAdmin)
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
	return rec, ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.PutMountRecord(rec) })
}

// mount mounts the tree of rec at real (rec.Path with its symlinks
// resolved, as checked) and registers it under key. The catalog watch
// starts before the mount, so that no change after the first listing is
// missed; without it the mount works uncached.
func (ms *Manager) mount(rec catalog.MountRecord, real string) error {
	e, err := ms.mountTree(rec, real, NewTree(ms.cfg.Catalog, ms.cfg.Disks, rec.Project, rec.Server, rec.Backup), rec.Project, true)
	if err != nil {
		return err
	}
	ms.mu.Lock()
	ms.m[rec.Path] = e
	ms.mu.Unlock()
	return nil
}

func (ms *Manager) mountTree(rec catalog.MountRecord, real string, tree *Tree, name string, cache bool) (*mounted, error) {
	ctx, cancel := context.WithCancel(context.Background())
	var target atomic.Pointer[fusefs.Mount]
	if cache {
		err := ms.cfg.Catalog.WatchMounts(ctx, func(chs []catalog.MountChange) {
			if m := target.Load(); m != nil {
				tree.invalidate(m, chs)
			}
		})
		if err != nil {
			ms.log().Warn("mount without a directory cache: new and deleted backups show after a second", "path", rec.Path, "err", err)
			cache = false
		}
	}
	tree.cached = cache
	m, err := fusefs.MountTree(real, tree, fusefs.Options{Name: name, Cache: cache})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mount %s: %w", rec.Path, err)
	}
	target.Store(m)
	return &mounted{rec: rec, m: m, tree: tree, watch: cancel}, nil
}

func (ms *Manager) log() *slog.Logger {
	if ms.cfg.Log == nil {
		return slog.Default()
	}
	return ms.cfg.Log
}

// Unmount removes a mount of the project ("" = any).
func (ms *Manager) Unmount(project, path string) error {
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
	return ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(path) })
}

// List returns a project's mounts ("" = all), by path.
func (ms *Manager) List(project string) []catalog.MountRecord {
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

// Recover cleans mounts a crashed daemon left and mounts them again.
func (ms *Manager) Recover() {
	if mp := ms.cfg.Mountpoint; mp != "" {
		if cleaned, err := fusefs.CleanStale(mp); err != nil {
			ms.log().Warn("stale FUSE mount", "path", mp, "err", err)
		} else if cleaned {
			ms.log().Info("cleaned stale FUSE mount", "path", mp)
		}
		if err := os.MkdirAll(mp, 0o755); err == nil {
			if err := ms.mount(catalog.MountRecord{Path: mp}, mp); err != nil {
				ms.log().Error("fuse.mountpoint", "path", mp, "err", err)
			}
		}
	}
	var recs []catalog.MountRecord
	_ = ms.cfg.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		recs, err = tx.MountRecords()
		return err
	})
	for _, rec := range recs {
		if rec.Browse {
			// Loop mounts do not survive the daemon: undo what is left.
			_ = exec.Command("umount", "-l", rec.Path).Run()
			_, _ = fusefs.CleanStale(rec.Internal)
			_ = ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(rec.Path) })
			continue
		}
		if cleaned, _ := fusefs.CleanStale(rec.Path); cleaned {
			ms.log().Info("cleaned stale FUSE mount", "path", rec.Path)
		}
		// The host access may have changed (a grant removed, a path
		// swapped for a symlink): mount again only what is still allowed.
		c, err := ms.cfg.Access.Caller(rec.Project, rec.ByAdmin)
		real := ""
		if err == nil {
			_, real, err = ms.checkPath(c, rec.Path)
		}
		if err == nil {
			err = ms.mount(rec, real)
		}
		if err != nil {
			ms.log().Warn("mount not restored", "path", rec.Path, "err", err)
			_ = ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(rec.Path) })
		}
	}
}

// Shutdown unmounts everything; records stay so that mounts come back.
func (ms *Manager) Shutdown() {
	ms.mu.Lock()
	var brs []*browsed
	for _, b := range ms.br {
		brs = append(brs, b)
	}
	ms.mu.Unlock()
	for _, b := range brs {
		_ = exec.Command("umount", "-l", b.rec.Path).Run()
		detachLoop(b.loop)
	}
	ms.mu.Lock()
	all := ms.m
	ms.m = map[string]*mounted{}
	ms.br = map[string]*browsed{}
	ms.mu.Unlock()
	for _, e := range all {
		if err := e.unmount(time.Second); err != nil {
			ms.log().Warn("unmount at shutdown; forcing a lazy unmount", "path", e.rec.Path, "err", err)
			unmountLazy(e.m.Dir)
			e.forget()
		}
	}
}
