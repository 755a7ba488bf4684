package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/internal/fsinfo"
)

// Disk is an open disk source.
type Disk interface {
	blockstore.Source
	io.Closer
}

// Location is where a source really is, as the kernel resolved it when
// the source was opened.
type Location struct {
	// Path is the real path of an image file, a block device or the
	// socket of an nbd+unix URI (every symlink resolved); "" for TCP.
	Path string
	// Addr is the host:port of an nbd:// URI; "" otherwise.
	Addr string
}

// Guard decides whether a source may be read, given where it really is;
// it runs after the open resolved the path and before a byte is read. A
// nil Guard allows everything.
type Guard func(Location) error

// ErrNotADisk means a path names something that is not a disk: a FIFO,
// a character device, a socket or a directory.
var ErrNotADisk = errors.New("not a regular file or block device")

// Open opens the disk named by spec: a path to an image file or block
// device (opened read-only), or an NBD URI. guard sees the resolved
// location first.
func Open(ctx context.Context, spec string, guard Guard) (Disk, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if strings.HasPrefix(spec, "nbd://") || strings.HasPrefix(spec, "nbd+unix://") {
		return OpenNBD(ctx, spec, guard)
	}
	if strings.Contains(spec, "://") {
		return nil, fmt.Errorf("open source %s: unknown URI scheme (want a path, nbd:// or nbd+unix://; a qmp+unix:// live VM disk is read through a VM session)", spec)
	}
	return OpenFile(spec, guard)
}

// Validate checks that spec names a readable disk that guard allows,
// without keeping it open, and returns its size.
func Validate(ctx context.Context, spec string, guard Guard) (int64, error) {
	d, err := Open(ctx, spec, guard)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	return d.Size(), nil
}

// File is a disk image file or block device.
type File struct {
	f      *os.File
	size   int64
	sparse bool // regular file: SEEK_DATA works

	mu sync.Mutex // lseek moves the shared file offset
}

var _ blockstore.SparseSource = (*File)(nil)

// OpenFile opens a raw image file or block device read-only. Nothing
// else is ever opened for reading: the path is first opened with O_PATH
// (which opens no device and never blocks), its type checked on that
// handle, its real path shown to guard, and only then is the same inode
// opened for reading, non-blocking, and checked again. A FIFO therefore
// cannot hang the open, and a character device or FIFO swapped in after
// the server was added is refused here, at backup time.
func OpenFile(path string, guard Guard) (*File, error) {
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, fmt.Errorf("open source %s: %w", path, err)
	}
	if err := diskType(st.Mode); err != nil {
		return nil, fmt.Errorf("open source %s: %w", path, err)
	}
	if guard != nil {
		real, err := fsinfo.FDPath(pfd)
		if err != nil {
			return nil, fmt.Errorf("open source %s: %w", path, err)
		}
		if err := guard(Location{Path: real}); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open source %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		f.Close()
		return nil, fmt.Errorf("open source %s: the file changed while it was opened", path)
	}
	// Reads of a regular file or block device do not block anyway; the
	// flag only kept the open itself from blocking.
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, fmt.Errorf("open source %s: %w", path, err)
	}
	d := &File{f: f}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		d.size, d.sparse = st.Size, true
		return d, nil
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open source %s: size of block device: %w", path, err)
	}
	d.size = end
	return d, nil
}

// diskType accepts a regular file or a block device.
func diskType(mode uint32) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
		return nil
	}
	return fmt.Errorf("%w: it is %s", ErrNotADisk, fsinfo.Kind(mode))
}

// Size returns the disk size in bytes.
func (d *File) Size() int64 { return d.size }

// ReadAt reads from the disk.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("read %s at %d: %w", d.f.Name(), off, err)
	}
	return n, err
}

// NextData returns the next data extent at or after off. A block device,
// or a file system without SEEK_DATA, reports everything as data.
func (d *File) NextData(ctx context.Context, off int64) (int64, int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if off >= d.size {
		return 0, 0, io.EOF
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.sparse {
		return off, d.size, nil
	}
	fd := int(d.f.Fd())
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return 0, 0, io.EOF
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		d.sparse = false
		return off, d.size, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("seek data in %s at %d: %w", d.f.Name(), off, err)
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, fmt.Errorf("seek hole in %s at %d: %w", d.f.Name(), start, err)
	}
	return start, min(end, d.size), nil
}

// Close closes the file.
func (d *File) Close() error { return d.f.Close() }
