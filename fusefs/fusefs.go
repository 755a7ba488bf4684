// Package fusefs mounts backups as a read-only file tree:
//
//	/<project>/<server>/<backup>/<disk>.img
//
// Only Enhanced backups appear. Directories are listed from a Tree on
// every lookup (with a 1 s kernel cache), so new backups appear and deleted
// ones disappear without remounting. Disk images are immutable, so their
// pages stay in the kernel's cache across opens (FOPEN_KEEP_CACHE); reads
// go to a volume reader with its own read-ahead and block cache, and every
// block is verified: a damaged block is EIO, never wrong bytes. A backup
// counts as in use (not deletable) while one of its images is open.
package fusefs

import (
	"context"
	"errors"
	"hash/fnv"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"csbs/blockstore"
	"csbs/catalog"
)

// Entry is one directory entry of the tree.
type Entry struct {
	Name  string
	Size  int64
	Mtime time.Time
}

// Image is an open disk image: Size bytes, read with ReadAt, which must
// be safe for concurrent use. Read errors reach the reader as toErrno
// maps them (a damaged block is EIO).
type Image interface {
	io.ReaderAt
	Size() int64
}

// Tree is what the file system shows. Paths are names: project, server,
// backup, disk (without ".img"). The daemon implements it on the catalog,
// already narrowed to what the mount may show.
type Tree interface {
	List(ctx context.Context, path []string) ([]Entry, error)
	Open(ctx context.Context, path []string) (Image, func(), error)
}

// levels of the tree below the root.
const (
	levelProject = iota
	levelServer
	levelBackup
	levelDisk
)

const imgSuffix = ".img"

// Mount is a mounted tree.
type Mount struct {
	Dir    string
	server *fuse.Server
}

// MountTree mounts tree read-only at dir.
func MountTree(dir string, tree Tree, name string) (*Mount, error) {
	sec := time.Second
	root := &dirNode{tree: tree}
	opts := &fs.Options{
		EntryTimeout: &sec, AttrTimeout: &sec, NegativeTimeout: &sec,
		MountOptions: fuse.MountOptions{
			FsName:       "csbs",
			Name:         "csbs",
			Options:      []string{"ro", "default_permissions"},
			MaxReadAhead: 1 << 20,
			DirectMount:  true,
		},
	}
	if name != "" {
		opts.MountOptions.FsName = "csbs:" + name
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil {
		return nil, err
	}
	return &Mount{Dir: dir, server: srv}, nil
}

// Unmount unmounts, waiting for the kernel to let go.
func (m *Mount) Unmount() error { return m.server.Unmount() }

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// CleanStale unmounts dir if it is a FUSE mount whose server is gone
// (stat fails with ENOTCONN), as a crashed daemon leaves behind.
func CleanStale(dir string) (bool, error) {
	_, err := os.Stat(dir)
	if err == nil || !errors.Is(err, syscall.ENOTCONN) {
		return false, nil
	}
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err == nil {
		return true, nil
	}
	if out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); err != nil {
		return false, errors.New("clean stale mount " + dir + ": " + strings.TrimSpace(string(out)))
	}
	return true, nil
}

// toErrno maps errors to errno: the one place this happens.
func toErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case blockstore.IsDataError(err):
		return syscall.EIO
	case errors.Is(err, catalog.ErrNotFound), errors.Is(err, blockstore.ErrMapNotFound):
		return syscall.ENOENT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

func inodeNumber(path []string) uint64 {
	h := fnv.New64a()
	for _, p := range path {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum64() | 1 // never 0, never the root's 1 by accident in practice
}

// dirNode is the root, a project, a server or a backup directory.
type dirNode struct {
	fs.Inode
	tree  Tree
	path  []string
	mtime time.Time
}

var (
	_ fs.NodeLookuper  = (*dirNode)(nil)
	_ fs.NodeReaddirer = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	setTime(&out.Attr, d.mtime)
	return 0
}

func setTime(a *fuse.Attr, t time.Time) {
	if t.IsZero() {
		return
	}
	a.SetTimes(&t, &t, &t)
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	es, err := d.tree.List(ctx, d.path)
	if err != nil {
		return nil, toErrno(err)
	}
	out := make([]fuse.DirEntry, 0, len(es))
	for _, e := range es {
		de := fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFDIR, Ino: inodeNumber(append(append([]string{}, d.path...), e.Name))}
		if len(d.path) == levelDisk {
			de.Name, de.Mode = e.Name+imgSuffix, syscall.S_IFREG
		}
		out = append(out, de)
	}
	return fs.NewListDirStream(out), 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	want := name
	if len(d.path) == levelDisk {
		var ok bool
		if want, ok = strings.CutSuffix(name, imgSuffix); !ok {
			return nil, syscall.ENOENT
		}
	}
	es, err := d.tree.List(ctx, d.path)
	if err != nil {
		return nil, toErrno(err)
	}
	for _, e := range es {
		if e.Name != want {
			continue
		}
		path := append(append([]string{}, d.path...), e.Name)
		ino := inodeNumber(path)
		if len(d.path) == levelDisk {
			f := &fileNode{tree: d.tree, path: path, size: e.Size, mtime: e.Mtime}
			f.fill(&out.Attr)
			return d.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}), 0
		}
		child := &dirNode{tree: d.tree, path: path, mtime: e.Mtime}
		out.Mode = syscall.S_IFDIR | 0o555
		setTime(&out.Attr, e.Mtime)
		return d.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
	}
	return nil, syscall.ENOENT
}

// fileNode is a disk image.
type fileNode struct {
	fs.Inode
	tree  Tree
	path  []string
	size  int64
	mtime time.Time
}

var (
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
)

func (f *fileNode) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o444
	a.Size = uint64(f.size)
	a.Blocks = (uint64(f.size) + 511) / 512
	a.Blksize = 64 << 10
	setTime(a, f.mtime)
}

func (f *fileNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	img, release, err := f.tree.Open(ctx, f.path)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	return &handle{img: img, release: release}, fuse.FOPEN_KEEP_CACHE, 0
}

// handle is an open disk image.
type handle struct {
	img     Image
	release func()
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.img.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.release != nil {
		h.release()
	}
	return 0
}
