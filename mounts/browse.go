package mounts

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"csbs/catalog"
	"csbs/fusefs"
)

// browsed is a disk image loop-mounted read-only.
type browsed struct {
	rec  catalog.MountRecord
	loop string
	fuse string // internal FUSE mount holding the image
}

// Browse loop-mounts one disk of a backup read-only at path, so that
// single files can be copied out. byAdmin says whose host access the
// path is checked under.
func (ms *Manager) Browse(b catalog.Backup, disk, path string, byAdmin bool) (catalog.MountRecord, error) {
	if os.Geteuid() != 0 {
		return catalog.MountRecord{}, fmt.Errorf("%w: browsing needs the daemon to run as root (loop devices and mount)", catalog.ErrInvalid)
	}
	if _, ok := catalog.MountEntryOf(b); !ok {
		if b.Type != catalog.TypeEnhanced {
			return catalog.MountRecord{}, fmt.Errorf("%w: backup %s is Common; only Enhanced backups can be browsed (%s)", catalog.ErrInvalid, b.Name, b.TypeReason)
		}
		return catalog.MountRecord{}, fmt.Errorf("%w: backup %s is %s", catalog.ErrConflict, b.Name, b.Status)
	}
	if !slices.ContainsFunc(b.Disks, func(d catalog.BackupDisk) bool { return d.Name == disk }) {
		return catalog.MountRecord{}, fmt.Errorf("%w: backup %s has no disk %q", catalog.ErrInvalid, b.Name, disk)
	}
	c, err := ms.cfg.Access.Caller(b.Project, byAdmin)
	if err != nil {
		return catalog.MountRecord{}, err
	}
	path, real, err := ms.checkPath(c, path)
	if err != nil {
		return catalog.MountRecord{}, err
	}
	internal := filepath.Join(ms.cfg.DataDir, "browse", b.ID+"-"+disk+"-"+filepath.Base(path))
	rec := catalog.MountRecord{Path: path, Project: b.Project, Backup: b.ID, Disk: disk, Browse: true, Internal: internal, ByAdmin: byAdmin}
	if err := ms.browse(rec, b, real); err != nil {
		return rec, err
	}
	return rec, ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.PutMountRecord(rec) })
}

func (ms *Manager) browse(rec catalog.MountRecord, b catalog.Backup, real string) error {
	_, _ = fusefs.CleanStale(rec.Internal)
	if err := os.MkdirAll(rec.Internal, 0o700); err != nil {
		return fmt.Errorf("browse %s: %w", rec.Path, err)
	}
	// The image behind the loop device is one fixed backup: no cache and
	// no watch needed.
	inner, err := ms.mountTree(rec, rec.Internal, NewTree(ms.cfg.Catalog, ms.cfg.Disks, b.Project, "", b.ID), "browse", false)
	if err != nil {
		return fmt.Errorf("mount backup image: %w", err)
	}
	var projectName string
	_ = ms.cfg.Catalog.View(func(tx *catalog.Txn) error {
		p, err := tx.Project(b.Project)
		projectName = p.Name
		return err
	})
	img := filepath.Join(rec.Internal, projectName, b.ServerName, b.Name, rec.Disk+".img")
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", "--partscan", img).CombinedOutput()
	if err != nil {
		_ = inner.unmount(5 * time.Second)
		return fmt.Errorf("loop device for %s: %v: %s", img, err, strings.TrimSpace(string(out)))
	}
	loop := strings.TrimSpace(string(out))
	// Partitions first (p1, p2, ...), then the whole disk.
	cands, _ := filepath.Glob(loop + "p*")
	slices.Sort(cands)
	cands = append(cands, loop)
	var tried []string
	for _, dev := range cands {
		// ext3/4 with a journal to replay must not write (noload), XFS
		// likewise (norecovery); other file systems take plain ro.
		for _, opts := range []string{"ro,noload", "ro,norecovery", "ro"} {
			o, err := exec.Command("mount", "-o", opts, dev, real).CombinedOutput()
			if err == nil {
				ms.mu.Lock()
				ms.br[rec.Path] = &browsed{rec: rec, loop: loop, fuse: rec.Internal}
				ms.m["\x00"+rec.Internal] = inner
				ms.mu.Unlock()
				return nil
			}
			tried = append(tried, fmt.Sprintf("%s (%s): %s", dev, opts, strings.TrimSpace(string(o))))
		}
	}
	detachLoop(loop)
	_ = inner.unmount(5 * time.Second)
	return fmt.Errorf("%w: no mountable file system found on disk %s of backup %s; tried %s", catalog.ErrInvalid, rec.Disk, b.Name, strings.Join(tried, "; "))
}

// Unbrowse undoes Browse for a project ("" = any).
func (ms *Manager) Unbrowse(project, path string) error {
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
			ms.log().Warn("unmount browse image; forcing a lazy unmount", "path", b.fuse, "err", err)
			unmountLazy(b.fuse)
			inner.forget()
		}
	}
	_ = os.Remove(b.fuse)
	return ms.cfg.Catalog.Release(func(tx *catalog.Txn) error { return tx.DeleteMountRecord(path) })
}

// detachLoop detaches a loop device and waits until the kernel has let
// go of its backing file (losetup -d only marks it for autoclear).
func detachLoop(loop string) {
	_ = exec.Command("losetup", "-d", loop).Run()
	backing := filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(backing); err != nil {
			return
		}
	}
}

func unmountLazy(path string) {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		_ = exec.Command("fusermount3", "-u", "-z", path).Run()
	}
}
