// Package fusefs mounts backups as a read-only file tree:
//
//	/<project>/<server>/<backup>/<disk>.img
//
// It is the generic node layer: what the tree holds comes from a Tree
// (package mounts implements one over the catalog). A directory lists
// its entries from the Tree once and keeps them (WithCache) until the
// owner calls Invalidate for it, so that `ls -R` of thousands of
// backups asks the Tree once per directory, and a lookup in a listed
// directory asks nothing; a lookup in a directory not listed yet asks
// the Tree for that one entry when the Tree can (Lookuper); an entry may
// bring its own directory's listing (Entry.Children). Invalidate also
// tells the kernel to forget the entries (NotifyEntry) and the listing
// (NotifyContent), which lets the kernel keep entries and attributes for
// 30 s and listings until then (FOPEN_CACHE_DIR): a repeated walk costs
// one request per directory. Without a cache, every readdir asks the
// Tree and the kernel keeps entries for a second.
//
// Disk images are immutable, so their pages stay in the kernel's cache
// across opens (FOPEN_KEEP_CACHE); reads go to a volume reader with its
// own read-ahead and block cache, and every block is verified: a
// damaged block is EIO, never wrong bytes. A backup counts as in use
// (not deletable) while one of its images is open.
package fusefs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/catalog"
)

// Entry is one directory entry of the tree.
type Entry struct {
	Name  string
	Size  int64
	Mtime time.Time
	// Children, for a directory, are its own entries when the Tree had
	// them at hand while listing its parent (a backup's disks come with
	// the server's listing); nil: unknown. A cached mount keeps them as
	// that directory's listing, which saves a List per directory in a
	// walk.
	Children []Entry
}

// Image is an open disk image: Size bytes, read with ReadAt, which must
// be safe for concurrent use. Read errors reach the reader as toErrno
// maps them (a damaged block is EIO).
type Image interface {
	io.ReaderAt
	Size() int64
}

// Tree is what the file system shows. Paths are names: project, server,
// backup, disk (without ".img"). Package mounts implements it on the
// catalog, already narrowed to what the mount may show. Its methods may
// run concurrently; a missing path is an error wrapping
// catalog.ErrNotFound.
type Tree interface {
	// List returns the entries of the directory at path, by name.
	List(ctx context.Context, path []string) ([]Entry, error)
	// Open opens the disk image at path (four names); the func releases
	// it.
	Open(ctx context.Context, path []string) (Image, func(), error)
}

// Lookuper is a Tree that finds one entry without listing its directory.
type Lookuper interface {
	Lookup(ctx context.Context, path []string) (Entry, error)
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
	root   *dirNode
}

// Options tune a mount.
type Options struct {
	// Name shows in /proc/mounts as csbs:<Name>.
	Name string
	// Cache keeps directory listings until Invalidate drops them; the
	// owner must call Invalidate for every change of the tree. Without
	// it every readdir asks the Tree.
	Cache bool
}

// kernelTTL is how long the kernel keeps entries and attributes: long
// when Invalidate tells it of changes, a second otherwise (what a new or
// deleted backup may take to show).
func kernelTTL(cache bool) time.Duration {
	if cache {
		return 30 * time.Second
	}
	return time.Second
}

// MountTree mounts tree read-only at dir.
func MountTree(dir string, tree Tree, o Options) (*Mount, error) {
	ttl, neg := kernelTTL(o.Cache), time.Second
	root := &dirNode{tree: tree, cache: o.Cache}
	opts := &fs.Options{
		EntryTimeout: &ttl, AttrTimeout: &ttl, NegativeTimeout: &neg,
		MountOptions: fuse.MountOptions{
			FsName:       "csbs",
			Name:         "csbs",
			Options:      []string{"ro", "default_permissions"},
			MaxReadAhead: readAhead,
			// Requests of 512 KiB (8 blocks loaded at once) and up to 64
			// of them in flight: a cold sequential read keeps every
			// worker busy. 1 MiB replies would not fit go-fuse's splice
			// pipe.
			MaxWrite:      512 << 10,
			MaxBackground: 64,
			DirectMount:   true,
		},
	}
	if o.Name != "" {
		opts.MountOptions.FsName = "csbs:" + o.Name
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil {
		return nil, err
	}
	// Best effort: without it reads work, with the kernel's 128 KiB
	// read-ahead.
	_ = setReadAhead(dir, readAhead)
	return &Mount{Dir: dir, server: srv, root: root}, nil
}

// readAhead is the kernel's read-ahead on a mount. A cold sequential read
// of an image went from ~1.0 to ~1.45 GB/s with 4 MiB instead of the
// kernel's 128 KiB (bench/cmd/csbsbench's FUSE figures).
const readAhead = 4 << 20

// setReadAhead sets the read-ahead of the mount at dir. The kernel takes
// the smaller of FUSE's max_readahead and the mount's backing device's
// read_ahead_kb, which starts at 128 KiB for every FUSE mount; only the
// latter, in sysfs, can raise it.
func setReadAhead(dir string, bytes int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := readAheadFile(st.Dev)
	return os.WriteFile(p, []byte(fmt.Sprint(bytes>>10)), 0o644)
}

// readAheadFile is the sysfs file of the read-ahead of the backing
// device dev (a FUSE mount's is named after its device number).
func readAheadFile(dev uint64) string {
	return fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(dev), unix.Minor(dev))
}

// Invalidate says that the entries names of the directory at dir
// appeared, went or changed (size, time). Cached listings of dir and of
// everything below those entries are dropped, and the kernel forgets
// the entries, so that the next access asks the Tree. It must not be
// called from a Tree method (the kernel may be waiting on that call).
func (m *Mount) Invalidate(dir []string, names ...string) {
	node := &m.root.Inode
	for _, name := range dir {
		if node = node.GetChild(name); node == nil {
			return // the kernel never looked it up: nothing cached
		}
	}
	dropDir(node)
	for _, name := range names {
		if len(dir) == levelDisk {
			name += imgSuffix
		}
		if child := node.GetChild(name); child != nil {
			dropBelow(child)
		}
		// ENOENT: the kernel has no such entry cached; nothing to do.
		_ = node.NotifyEntry(name)
	}
}

// dropDir drops the listing of a directory, ours and the kernel's
// (NotifyContent also drops its attributes, such as the time).
func dropDir(n *fs.Inode) {
	if d, ok := n.Operations().(*dirNode); ok {
		d.drop()
		_ = n.NotifyContent(0, 0)
	}
}

// dropBelow drops the listings of a directory and its subtree.
func dropBelow(n *fs.Inode) {
	dropDir(n)
	for _, c := range n.Children() {
		dropBelow(c)
	}
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
	cache bool
	path  []string

	mu    sync.Mutex
	mtime time.Time
	// gen counts the drops of this directory's listing: a listing fetched
	// before a drop is not kept, and children filled from it go stale.
	gen     uint64
	entries map[string]Entry // cached listing; nil: not listed
	sorted  []Entry
	// from and fromGen: the listing came with the parent's listing at
	// that generation, and holds only while the parent's has not been
	// dropped since.
	from    *dirNode
	fromGen uint64
}

var (
	_ fs.NodeLookuper       = (*dirNode)(nil)
	_ fs.NodeOpendirHandler = (*dirNode)(nil)
	_ fs.NodeGetattrer      = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
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

func (d *dirNode) drop() {
	d.mu.Lock()
	d.gen++
	d.entries, d.sorted, d.from = nil, nil, nil
	d.mu.Unlock()
}

func (d *dirNode) generation() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gen
}

// set keeps es as the listing, unless it was dropped since generation
// gen; from, when set, is the parent whose listing at fromGen brought it.
func (d *dirNode) set(es []Entry, gen uint64, from *dirNode, fromGen uint64) {
	m := make(map[string]Entry, len(es))
	for _, e := range es {
		m[e.Name] = e
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen == gen {
		d.entries, d.sorted, d.from, d.fromGen = m, es, from, fromGen
	}
}

// cached returns the kept listing, and false when there is none (or it
// came with a parent listing that has been dropped since).
func (d *dirNode) cached() (map[string]Entry, []Entry, uint64, bool) {
	d.mu.Lock()
	m, es, gen, from, fromGen := d.entries, d.sorted, d.gen, d.from, d.fromGen
	d.mu.Unlock()
	if m == nil || (from != nil && from.generation() != fromGen) {
		return nil, nil, gen, false
	}
	return m, es, gen, true
}

// list returns the directory's entries, from the cache when it has them.
func (d *dirNode) list(ctx context.Context) ([]Entry, uint64, error) {
	gen := uint64(0)
	if d.cache {
		_, es, g, ok := d.cached()
		if ok {
			return es, g, nil
		}
		gen = g
	}
	es, err := d.tree.List(ctx, d.path)
	if err != nil || !d.cache {
		return es, gen, err
	}
	d.set(es, gen, nil, 0)
	return es, gen, nil
}

// find returns one entry: from the cached listing, else from the Tree's
// Lookup, else from a listing. listed says that it came from a listing
// of generation gen (so its Children may be kept).
func (d *dirNode) find(ctx context.Context, name string) (e Entry, gen uint64, listed bool, err error) {
	if d.cache {
		m, _, g, ok := d.cached()
		if ok {
			e, found := m[name]
			if !found {
				return Entry{}, 0, false, fmt.Errorf("%s: %w", name, catalog.ErrNotFound)
			}
			return e, g, true, nil
		}
	}
	if l, ok := d.tree.(Lookuper); ok {
		e, err := l.Lookup(ctx, append(slices.Clip(d.path), name))
		return e, 0, false, err
	}
	es, g, err := d.list(ctx)
	if err != nil {
		return Entry{}, 0, false, err
	}
	for _, e := range es {
		if e.Name == name {
			return e, g, true, nil
		}
	}
	return Entry{}, 0, false, fmt.Errorf("%s: %w", name, catalog.ErrNotFound)
}

// OpendirHandle lists the directory for one open. In a cached mount
// the kernel keeps the listing (FOPEN_CACHE_DIR) until Invalidate drops
// it (NotifyContent), so a repeated walk costs one request per
// directory instead of three.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	es, _, err := d.list(ctx)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	h := &dirHandle{entries: make([]fuse.DirEntry, 0, len(es))}
	for _, e := range es {
		de := fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFDIR, Ino: inodeNumber(append(slices.Clip(d.path), e.Name))}
		if len(d.path) == levelDisk {
			de.Name, de.Mode = e.Name+imgSuffix, syscall.S_IFREG
		}
		h.entries = append(h.entries, de)
	}
	var fuseFlags uint32
	if d.cache {
		fuseFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	}
	return h, fuseFlags, 0
}

// dirHandle is an open directory: the listing taken at open, read in
// order; an entry's offset is its position + 1.
type dirHandle struct {
	entries []fuse.DirEntry
	pos     int
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
)

func (h *dirHandle) Readdirent(context.Context) (*fuse.DirEntry, syscall.Errno) {
	if h.pos >= len(h.entries) {
		return nil, 0
	}
	de := h.entries[h.pos]
	h.pos++
	de.Off = uint64(h.pos)
	return &de, 0
}

func (h *dirHandle) Seekdir(_ context.Context, off uint64) syscall.Errno {
	h.pos = int(min(off, uint64(len(h.entries))))
	return 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	want := name
	if len(d.path) == levelDisk {
		var ok bool
		if want, ok = strings.CutSuffix(name, imgSuffix); !ok {
			return nil, syscall.ENOENT
		}
	}
	e, gen, listed, err := d.find(ctx, want)
	if err != nil {
		return nil, toErrno(err)
	}
	path := append(slices.Clip(d.path), e.Name)
	ino := inodeNumber(path)
	// The kernel may have forgotten the entry while the node lives on
	// (same inode number): refresh it rather than make a twin, which the
	// bridge would drop in favour of the old one.
	existing := d.GetChild(name)
	if len(d.path) == levelDisk {
		f, ok := existingOps[*fileNode](existing)
		if !ok {
			f = &fileNode{tree: d.tree, path: path}
		}
		f.set(e)
		f.fill(&out.Attr)
		if ok {
			return existing, 0
		}
		return d.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}), 0
	}
	out.Mode = syscall.S_IFDIR | 0o555
	setTime(&out.Attr, e.Mtime)
	child, ok := existingOps[*dirNode](existing)
	if !ok {
		child = &dirNode{tree: d.tree, cache: d.cache, path: path}
	}
	child.mu.Lock()
	child.mtime = e.Mtime
	childGen := child.gen
	child.mu.Unlock()
	if d.cache && listed && e.Children != nil {
		child.set(e.Children, childGen, d, gen)
	}
	if ok {
		return existing, 0
	}
	return d.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
}

// existingOps returns the node behind an inode if it has type T.
func existingOps[T fs.InodeEmbedder](n *fs.Inode) (T, bool) {
	var zero T
	if n == nil {
		return zero, false
	}
	t, ok := n.Operations().(T)
	return t, ok
}

// fileNode is a disk image.
type fileNode struct {
	fs.Inode
	tree Tree
	path []string

	mu    sync.Mutex
	size  int64
	mtime time.Time
}

var (
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
)

func (f *fileNode) set(e Entry) {
	f.mu.Lock()
	f.size, f.mtime = e.Size, e.Mtime
	f.mu.Unlock()
}

func (f *fileNode) fill(a *fuse.Attr) {
	f.mu.Lock()
	defer f.mu.Unlock()
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
