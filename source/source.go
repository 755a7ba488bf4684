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
)

// Disk is an open disk source.
type Disk interface {
	blockstore.Source
	io.Closer
}

// Open opens the disk named by spec: a path to an image file or block
// device (opened read-only), or an NBD URI.
func Open(ctx context.Context, spec string) (Disk, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if strings.HasPrefix(spec, "nbd://") || strings.HasPrefix(spec, "nbd+unix://") {
		return OpenNBD(ctx, spec)
	}
	if strings.Contains(spec, "://") {
		return nil, fmt.Errorf("open source %s: not a path or an NBD URI (a qmp+unix:// live VM disk is read through a VM session)", spec)
	}
	return OpenFile(spec)
}

// Validate checks that spec names a readable disk, without keeping it open.
func Validate(ctx context.Context, spec string) (int64, error) {
	d, err := Open(ctx, spec)
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

// OpenFile opens a raw image file or block device read-only.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open source: %w", err)
	}
	d := &File{f: f}
	switch {
	case fi.Mode().IsRegular():
		d.size, d.sparse = fi.Size(), true
	case fi.Mode()&os.ModeDevice != 0:
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open source %s: size of block device: %w", path, err)
		}
		d.size = end
	default:
		f.Close()
		return nil, fmt.Errorf("open source %s: not a regular file or block device (%s)", path, fi.Mode().Type())
	}
	return d, nil
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
