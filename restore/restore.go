// Package restore writes a backed-up disk to a target: a new or existing
// image file (sparse: zero blocks become holes) or a block device.
//
// A file target is written under a temporary name in the target's
// directory and renamed into place only when complete and synced, so a
// failed restore (disk full, corrupt block, cancellation) leaves nothing
// half-written under the target's name. A block device is written in
// place; a failure there is reported with the offset reached.
//
// Targets are opened relative to their directory, which is opened first:
// the directory's real path (from the kernel, every symlink resolved) is
// what Options.Check judges, and the temporary file, the rename and the
// device open all go through that directory handle, so a path swapped
// for a symlink after the check cannot redirect the write. Only a new
// file, an existing regular file or a block device is ever a target; a
// FIFO, character device, socket, directory or symlink is refused, and
// nothing is opened in a way that could block.
package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/internal/fsinfo"
)

// Volume is a backed-up disk read block by block, as normal restores and
// instant restores (package hydrate) read it; *blockstore.Volume
// implements it. BlockTo must return a full, verified block (decoded into
// buf unless the store's cache holds it) and may be called concurrently.
type Volume interface {
	Size() int64
	BlockSize() int
	BlockHash(i int64) (blockstore.Hash, error)
	BlockTo(ctx context.Context, i int64, buf []byte) ([]byte, error)
}

// Budget bounds memory in flight (the store's budget in the daemon):
// each worker takes its block buffer from it.
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	Release(n int64)
}

var _ Volume = (*blockstore.Volume)(nil)

// ErrTargetNotEmpty means the target holds data and Force was not given.
var ErrTargetNotEmpty = errors.New("target is not empty (use --force to overwrite)")

// Options tune a restore.
type Options struct {
	// Force allows overwriting a non-empty target.
	Force bool
	// Workers is the number of parallel block fetchers; default
	// GOMAXPROCS.
	Workers int
	// Budget, if set, lends each worker its block buffer.
	Budget Budget
	// Verify re-reads the target after writing and compares every block
	// with its hash (blocks are always verified when read from the store).
	Verify bool
	// Progress, if set, receives bytes done and total; calls are serialised.
	Progress func(done, total int64)
	// Check, if set, is asked about the target's real path (its
	// directory as the kernel resolved it, plus its name) before
	// anything is created or opened for writing; an error refuses it.
	Check func(real string) error
}

// Result summarises a finished restore.
type Result struct {
	Bytes      int64         `json:"bytes"`
	DataBlocks int64         `json:"data_blocks"`
	ZeroBlocks int64         `json:"zero_blocks"`
	Verified   bool          `json:"verified"`
	Duration   time.Duration `json:"duration"`
}

// ToTarget restores vol to the file or block device at target.
func ToTarget(ctx context.Context, vol Volume, target string, opt Options) (Result, error) {
	start := time.Now()
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0)
	}
	t, err := openTarget(target, vol.Size(), opt.Force, opt.Check)
	if err != nil {
		return Result{}, fmt.Errorf("restore to %s: %w", target, err)
	}
	res, err := copyBlocks(ctx, vol, t, opt)
	if err == nil && opt.Verify {
		err = verify(ctx, vol, t.f)
		res.Verified = err == nil
	}
	if err == nil {
		err = t.commit()
	}
	if err != nil {
		t.abort()
		return Result{}, fmt.Errorf("restore to %s: %w", target, err)
	}
	res.Duration = time.Since(start)
	return res, nil
}

type target struct {
	dir     *os.File // the target's directory; names below are relative to it
	base    string
	tmp     string // "" for a block device written in place
	f       *os.File
	isFile  bool
	replace bool // rename over an existing file
}

// ErrNotATarget means a path names something a disk cannot be restored
// to: a FIFO, a character device, a socket, a directory or a symlink.
var ErrNotATarget = errors.New("not a file or block device")

// Inspect checks a target as a restore would, without writing: its
// directory exists, check accepts its real path, and it is absent (a new
// file), a regular file or a block device. A restore start uses it to
// refuse a bad target at once rather than in the job.
func Inspect(path string, check func(real string) error) error {
	dir, base, err := openDir(path, check)
	if err != nil {
		return err
	}
	defer dir.Close()
	_, _, err = statAt(dir, base)
	return err
}

// InspectWrite is Inspect for a restore that will write size bytes
// without (or with) force: it also refuses what the restore would refuse
// when it opens the target (a file or device that holds data, without
// force; a device that is smaller than size or in use), so that a restore
// start fails at once rather than later in its job. It writes nothing.
func InspectWrite(path string, size int64, force bool, check func(real string) error) error {
	dir, base, err := openDir(path, check)
	if err != nil {
		return err
	}
	defer dir.Close()
	st, exists, err := statAt(dir, base)
	switch {
	case err != nil || !exists:
		return err
	case st.Mode&unix.S_IFMT == unix.S_IFREG:
		if st.Size > 0 && !force {
			return fmt.Errorf("%w: file has %d bytes", ErrTargetNotEmpty, st.Size)
		}
		return nil
	}
	t, err := openDeviceTarget(dir, base, size, force, st)
	if err != nil {
		return err
	}
	return t.f.Close()
}

// openDir opens the directory of path and asks check about the target's
// real path.
func openDir(path string, check func(real string) error) (*os.File, string, error) {
	if !filepath.IsAbs(path) {
		return nil, "", fmt.Errorf("%q is not an absolute path", path)
	}
	parent, base := filepath.Split(filepath.Clean(path))
	if base == "" {
		return nil, "", fmt.Errorf("%w: it is a directory", ErrNotATarget)
	}
	fd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("target directory: %w", &os.PathError{Op: "open", Path: parent, Err: err})
	}
	dir := os.NewFile(uintptr(fd), parent)
	if check != nil {
		real, err := fsinfo.FDPath(fd)
		if err == nil {
			err = check(filepath.Join(real, base))
		}
		if err != nil {
			dir.Close()
			return nil, "", err
		}
	}
	return dir, base, nil
}

// statAt looks at base in dir without following a symlink; exists is
// false for a new file. Anything but a regular file or a block device
// is refused.
func statAt(dir *os.File, base string) (st unix.Stat_t, exists bool, err error) {
	err = unix.Fstatat(int(dir.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return st, false, nil
	}
	if err != nil {
		return st, false, &os.PathError{Op: "stat", Path: filepath.Join(dir.Name(), base), Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
		return st, true, nil
	case unix.S_IFLNK:
		return st, true, fmt.Errorf("%w: it is a symbolic link; name the file or device itself", ErrNotATarget)
	}
	return st, true, fmt.Errorf("%w: it is %s", ErrNotATarget, fsinfo.Kind(st.Mode))
}

// openAt opens base in dir for writing without following a symlink or
// blocking, and checks that it is still the inode statAt saw.
func openAt(dir *os.File, base string, flags int, want unix.Stat_t) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), base, flags|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(dir.Name(), base), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), base))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Dev != want.Dev || st.Ino != want.Ino || st.Mode&unix.S_IFMT != want.Mode&unix.S_IFMT {
		f.Close()
		return nil, fmt.Errorf("target %s changed while it was opened", f.Name())
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func openTarget(path string, size int64, force bool, check func(string) error) (*target, error) {
	dir, base, err := openDir(path, check)
	if err != nil {
		return nil, err
	}
	t, err := openTargetIn(dir, base, size, force)
	if err != nil {
		dir.Close()
		return nil, err
	}
	return t, nil
}

func openTargetIn(dir *os.File, base string, size int64, force bool) (*target, error) {
	st, exists, err := statAt(dir, base)
	switch {
	case err != nil:
		return nil, err
	case !exists:
		return newFileTarget(dir, base, size, false)
	case st.Mode&unix.S_IFMT == unix.S_IFREG:
		if st.Size > 0 && !force {
			return nil, fmt.Errorf("%w: file has %d bytes", ErrTargetNotEmpty, st.Size)
		}
		return newFileTarget(dir, base, size, true)
	}
	return openDeviceTarget(dir, base, size, force, st)
}

func newFileTarget(dir *os.File, base string, size int64, replace bool) (*target, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := "." + base + ".csbs-partial-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(int(dir.Fd()), tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: filepath.Join(dir.Name(), tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), tmp))
	if err := f.Truncate(size); err != nil {
		f.Close()
		unix.Unlinkat(int(dir.Fd()), tmp, 0)
		return nil, fmt.Errorf("size target to %d bytes: %w", size, err)
	}
	return &target{dir: dir, base: base, tmp: tmp, f: f, isFile: true, replace: replace}, nil
}

// openDeviceTarget opens a block device exclusively: the kernel refuses
// a device that is mounted or otherwise in use (the store's own file
// system, a disk with a mounted partition) with EBUSY.
func openDeviceTarget(dir *os.File, base string, size int64, force bool, st unix.Stat_t) (*target, error) {
	f, err := openAt(dir, base, unix.O_EXCL, st)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("device is in use (mounted, or held by another driver): %w", err)
		}
		return nil, err
	}
	devSize, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of device: %w", err)
	}
	if devSize < size {
		f.Close()
		return nil, fmt.Errorf("device has %d bytes, the disk needs %d", devSize, size)
	}
	if !force {
		head := make([]byte, min(devSize, 1<<20))
		if _, err := f.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
			f.Close()
			return nil, fmt.Errorf("read device head: %w", err)
		}
		if !isZero(head) {
			f.Close()
			return nil, fmt.Errorf("%w: device's first MiB holds data", ErrTargetNotEmpty)
		}
	}
	return &target{dir: dir, base: base, f: f}, nil
}

func (t *target) commit() error {
	defer t.dir.Close()
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	if err := t.f.Close(); err != nil {
		return err
	}
	if !t.isFile {
		return nil
	}
	dfd := int(t.dir.Fd())
	if t.replace {
		if err := unix.Renameat(dfd, t.tmp, dfd, t.base); err != nil {
			return &os.LinkError{Op: "rename", Old: t.tmp, New: t.base, Err: err}
		}
	} else if err := unix.Linkat(dfd, t.tmp, dfd, t.base, 0); err != nil {
		// Link refuses to replace a target that appeared meanwhile.
		return &os.LinkError{Op: "link", Old: t.tmp, New: t.base, Err: err}
	} else if err := unix.Unlinkat(dfd, t.tmp, 0); err != nil {
		return &os.PathError{Op: "remove", Path: t.tmp, Err: err}
	}
	return t.dir.Sync()
}

func (t *target) abort() {
	t.f.Close()
	if t.tmp != "" {
		unix.Unlinkat(int(t.dir.Fd()), t.tmp, 0)
	}
	t.dir.Close()
}

// OpenInPlace opens a target that an instant restore writes in place
// (hydration and guest writes go straight to it): a new file created
// with size bytes when mayCreate (fresh reports that it was created
// empty), an existing regular file (grown to size), or a block device
// (opened exclusively). check judges the real path first, as for
// ToTarget. A restart reopens with mayCreate false, and the same checks.
func OpenInPlace(path string, size int64, force, mayCreate bool, check func(real string) error) (f *os.File, fresh bool, err error) {
	dir, base, err := openDir(path, check)
	if err != nil {
		return nil, false, err
	}
	defer dir.Close()
	st, exists, err := statAt(dir, base)
	switch {
	case err != nil:
		return nil, false, err
	case !exists && !mayCreate:
		return nil, false, &os.PathError{Op: "open", Path: path, Err: os.ErrNotExist}
	case !exists:
		fd, err := unix.Openat(int(dir.Fd()), base, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, false, &os.PathError{Op: "create", Path: path, Err: err}
		}
		f := os.NewFile(uintptr(fd), path)
		if err := f.Truncate(size); err != nil {
			f.Close()
			unix.Unlinkat(int(dir.Fd()), base, 0)
			return nil, false, err
		}
		return f, true, nil
	case st.Mode&unix.S_IFMT == unix.S_IFREG:
		if st.Size > 0 && !force && mayCreate {
			return nil, false, fmt.Errorf("%w: file has %d bytes", ErrTargetNotEmpty, st.Size)
		}
		f, err := openAt(dir, base, 0, st)
		if err != nil {
			return nil, false, err
		}
		if st.Size < size {
			if err := f.Truncate(size); err != nil {
				f.Close()
				return nil, false, err
			}
		}
		return f, st.Size == 0, nil
	}
	f, err = openAt(dir, base, unix.O_EXCL, st)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, false, fmt.Errorf("device is in use (mounted, or held by another driver): %w", err)
		}
		return nil, false, err
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end < size {
		f.Close()
		return nil, false, fmt.Errorf("device has %d bytes, the disk needs %d", end, size)
	}
	if mayCreate && !force {
		f.Close()
		return nil, false, fmt.Errorf("instant restore onto a block device overwrites it: add --force")
	}
	return f, false, nil
}

// chunkBlocks is how many consecutive blocks a worker takes at a time.
const chunkBlocks = 16

// flushEvery is how many bytes written start a background fdatasync of
// the target: write-back then runs while the workers decode, instead of
// all at the end.
const flushEvery = 64 << 20

func copyBlocks(ctx context.Context, vol Volume, t *target, opt Options) (Result, error) {
	size, bs := vol.Size(), int64(vol.BlockSize())
	nblocks := (size + bs - 1) / bs
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var done, dataBlocks, zeroBlocks, next atomic.Int64
	var progressMu sync.Mutex
	fl := newFlusher(t.f)
	defer fl.stop()
	var wg sync.WaitGroup
	zero := make([]byte, bs)
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if opt.Budget != nil {
				if err := opt.Budget.Acquire(ctx, bs); err != nil {
					cancel(err)
					return
				}
				defer opt.Budget.Release(bs)
			}
			buf := make([]byte, bs)
			for {
				first := (next.Add(1) - 1) * chunkBlocks
				if first >= nblocks || ctx.Err() != nil {
					return
				}
				wrote, err := copyChunk(ctx, vol, t, first, min(first+chunkBlocks, nblocks), buf, zero, &dataBlocks, &zeroBlocks)
				if err != nil {
					cancel(err)
					return
				}
				fl.wrote(wrote)
				d := done.Add(min(chunkBlocks*bs, size-first*bs))
				if opt.Progress != nil {
					progressMu.Lock()
					opt.Progress(d, size)
					progressMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return Result{}, context.Cause(ctx)
	}
	return Result{Bytes: size, DataBlocks: dataBlocks.Load(), ZeroBlocks: zeroBlocks.Load()}, nil
}

// copyChunk writes blocks [from, to) and returns the bytes written.
func copyChunk(ctx context.Context, vol Volume, t *target, from, to int64, buf, zero []byte, data, zeros *atomic.Int64) (int64, error) {
	bs, size := int64(vol.BlockSize()), vol.Size()
	var wrote int64
	for i := from; i < to; i++ {
		off := i * bs
		n := min(bs, size-off)
		h, err := vol.BlockHash(i)
		if err != nil {
			return wrote, err
		}
		var b []byte
		if h.IsZero() {
			zeros.Add(1)
			if t.isFile {
				continue // the new file is all holes already
			}
			b = zero
		} else {
			data.Add(1)
			if b, err = vol.BlockTo(ctx, i, buf); err != nil {
				return wrote, err
			}
		}
		if _, err := t.f.WriteAt(b[:n], off); err != nil {
			return wrote, fmt.Errorf("write at offset %d: %w", off, err)
		}
		wrote += n
	}
	return wrote, nil
}

// flusher fdatasyncs a target in the background each time flushEvery
// more bytes were written, so that the kernel writes back while the
// restore decodes; the restore's final sync then has little left to do.
// Errors are left to that final sync.
type flusher struct {
	f       *os.File
	pending atomic.Int64
	kick    chan struct{}
	done    chan struct{}
}

func newFlusher(f *os.File) *flusher {
	fl := &flusher{f: f, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(fl.done)
		for range fl.kick {
			_ = unix.Fdatasync(int(fl.f.Fd()))
		}
	}()
	return fl
}

func (fl *flusher) wrote(n int64) {
	if fl.pending.Add(n) < flushEvery {
		return
	}
	fl.pending.Store(0)
	select {
	case fl.kick <- struct{}{}:
	default: // one is running; it covers these bytes too, or the next does
	}
}

func (fl *flusher) stop() {
	close(fl.kick)
	<-fl.done
}

// verify re-reads the written target and checks every block's hash.
func verify(ctx context.Context, vol Volume, f *os.File) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync before verify: %w", err)
	}
	bs, size := int64(vol.BlockSize()), vol.Size()
	buf := make([]byte, bs)
	for i := int64(0); i*bs < size; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(bs, size-i*bs)
		clear(buf)
		if _, err := f.ReadAt(buf[:n], i*bs); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("verify: read at %d: %w", i*bs, err)
		}
		h, err := vol.BlockHash(i)
		if err != nil {
			return err
		}
		ok := h.IsZero() && isZero(buf) || !h.IsZero() && blockstore.HashBlock(buf) == h
		if !ok {
			return fmt.Errorf("verify: block %d at offset %d differs from the backup", i, i*bs)
		}
	}
	return nil
}

func isZero(b []byte) bool { return blockstore.IsZeroBlock(b) }

// CleanPartials removes the temporary files a killed restore to target
// left in the target's directory, and returns how many it removed.
func CleanPartials(target string) (int, error) {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".csbs-partial-*"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range matches {
		if err := os.Remove(m); err == nil {
			n++
		}
	}
	return n, nil
}
