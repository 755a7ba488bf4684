package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/internal/fsinfo"
	"csbs/nbd"
)

// NBD is a disk read over NBD with the package nbd client: many requests
// in flight, holes found with block status (base:allocation) and never
// read, and, when the export offers a dirty bitmap (QEMU's
// qemu:dirty-bitmap:NAME), the extents that changed since the bitmap was
// created.
type NBD struct {
	c      *nbd.Client
	uri    string
	bitmap string // changed-extent context; "" for none

	mu      sync.Mutex // the caches below
	alloc   extentWindow
	changed extentWindow

	pf *prefetcher // nil: no read-ahead
}

var (
	_ blockstore.SparseSource  = (*NBD)(nil)
	_ blockstore.ChangedSource = (*NBD)(nil)
)

// BitmapParam is the NBD URI query parameter that names a dirty bitmap
// the export offers as a block status context.
const BitmapParam = "dirty-bitmap"

// OpenNBD connects to an NBD export (a qemu-nbd export of a VM's disk,
// for example). A dirty-bitmap=NAME query parameter asks for the context
// qemu:dirty-bitmap:NAME (see NBD.HasBitmap).
func OpenNBD(ctx context.Context, uri string, guard Guard) (*NBD, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("open source: NBD URI %q: %w", uri, err)
	}
	return OpenNBDBitmap(ctx, uri, u.Query().Get(BitmapParam), guard)
}

// OpenNBDBitmap connects to an NBD export and asks for the named dirty
// bitmap's context ("" for none). The socket of an nbd+unix URI is
// opened with O_PATH first, its type and real path checked, and
// connected through that handle, so the guard's decision holds for the
// socket that is dialed.
func OpenNBDBitmap(ctx context.Context, uri, bitmap string, guard Guard) (*NBD, error) {
	t, err := nbd.ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	if t.Network == "unix" {
		pfd, err := unix.Open(t.Address, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open source %s: socket %s: %w", uri, t.Address, err)
		}
		defer unix.Close(pfd)
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			return nil, fmt.Errorf("open source %s: %w", uri, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return nil, fmt.Errorf("open source %s: %s is %s, not a socket", uri, t.Address, fsinfo.Kind(st.Mode))
		}
		if guard != nil {
			real, err := fsinfo.FDPath(pfd)
			if err != nil {
				return nil, fmt.Errorf("open source %s: %w", uri, err)
			}
			if err := guard(Location{Path: real}); err != nil {
				return nil, err
			}
		}
		t.Address = fmt.Sprintf("/proc/self/fd/%d", pfd)
	} else if guard != nil {
		if err := guard(Location{Addr: t.Address}); err != nil {
			return nil, err
		}
	}
	opt := nbd.Options{}
	if bitmap != "" {
		opt.MetaContexts = []string{nbd.MetaDirtyBitmap(bitmap)}
	}
	c, err := nbd.DialTargetOptions(ctx, t, uri, opt)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	return &NBD{c: c, uri: uri, bitmap: bitmap}, nil
}

// Size returns the export size.
func (d *NBD) Size() int64 { return d.c.Size() }

// ReadAt reads from the export, from the read-ahead when it has the
// range (see Prefetch).
func (d *NBD) ReadAt(p []byte, off int64) (int, error) {
	if d.pf != nil {
		if n, ok := d.pf.read(d, p, off); ok {
			return n, nil
		}
	}
	return d.c.ReadAt(p, off)
}

// Close closes the connection.
func (d *NBD) Close() error { return d.c.Close() }

// Bitmap returns the dirty bitmap asked for ("" for none).
func (d *NBD) Bitmap() string { return d.bitmap }

// HasBitmap reports whether the server offers the dirty bitmap asked for.
func (d *NBD) HasBitmap() bool {
	return d.bitmap != "" && d.c.HasContext(nbd.MetaDirtyBitmap(d.bitmap))
}

// HasAllocation reports whether the server offers base:allocation.
func (d *NBD) HasAllocation() bool { return d.c.HasContext(nbd.MetaBaseAllocation) }

// statusWindow is how much block status one request asks for.
const statusWindow = 1 << 30

// NextData returns the next extent at or after off that may hold
// non-zero bytes. Only extents the server marks NBD_STATE_ZERO are
// skipped (a hole without the zero bit may read as anything), and only
// when two block status queries one after the other both say so: QEMU's
// image fleecing answers block status from the overlay and then from the
// live disk, and a guest write that is copied to the overlay between the
// two lookups could make a region that held data at the backup's
// instant look zero once; the second query then finds it in the overlay.
func (d *NBD) NextData(ctx context.Context, off int64) (int64, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nextData(ctx, &d.alloc, off)
}

func (d *NBD) nextData(ctx context.Context, w *extentWindow, off int64) (int64, int64, error) {
	if !d.HasAllocation() {
		if off >= d.Size() {
			return 0, 0, io.EOF
		}
		return off, d.Size(), nil
	}
	return w.next(ctx, off, d.Size(), func(e nbd.StatusExtent) bool { return e.Flags&nbd.StateZero == 0 },
		func(ctx context.Context, pos int64) ([]nbd.StatusExtent, error) {
			a, err := d.c.BlockStatus(ctx, nbd.MetaBaseAllocation, pos, statusWindow)
			if err != nil {
				return nil, err
			}
			b, err := d.c.BlockStatus(ctx, nbd.MetaBaseAllocation, pos, a[len(a)-1].End()-pos)
			if err != nil {
				return nil, err
			}
			return zeroInBoth(a, b), nil
		})
}

// NextChanged returns the next extent at or after off that the dirty
// bitmap marks changed. It fails when the export offers no bitmap: the
// caller must check HasBitmap before trusting a parent.
func (d *NBD) NextChanged(ctx context.Context, off int64) (int64, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nextChanged(ctx, &d.changed, off)
}

func (d *NBD) nextChanged(ctx context.Context, w *extentWindow, off int64) (int64, int64, error) {
	if !d.HasBitmap() {
		return 0, 0, fmt.Errorf("%s: %w: no dirty bitmap %q on this export", d.uri, nbd.ErrNoBlockStatus, d.bitmap)
	}
	ctxName := nbd.MetaDirtyBitmap(d.bitmap)
	return w.next(ctx, off, d.Size(), func(e nbd.StatusExtent) bool { return e.Flags&nbd.StateDirty != 0 },
		func(ctx context.Context, pos int64) ([]nbd.StatusExtent, error) {
			return d.c.BlockStatus(ctx, ctxName, pos, statusWindow)
		})
}

// extentWindow caches the block status of one context over [from, to).
type extentWindow struct {
	from, to int64
	ext      []nbd.StatusExtent
}

// next returns the first run of extents matching want that ends after
// off, fetching status as needed.
func (w *extentWindow) next(ctx context.Context, off, size int64, want func(nbd.StatusExtent) bool,
	fetch func(ctx context.Context, pos int64) ([]nbd.StatusExtent, error)) (int64, int64, error) {
	pos := off
	for pos < size {
		if pos < w.from || pos >= w.to {
			ext, err := fetch(ctx, pos)
			if err != nil {
				return 0, 0, err
			}
			if len(ext) == 0 || ext[0].Offset != pos || ext[len(ext)-1].End() <= pos {
				return 0, 0, errors.New("block status reply does not start at the offset asked for")
			}
			w.from, w.to, w.ext = pos, ext[len(ext)-1].End(), ext
		}
		start, end := int64(-1), int64(-1)
		for _, e := range w.ext {
			if e.End() <= pos {
				continue
			}
			if want(e) {
				if start < 0 {
					start = max(e.Offset, pos)
				}
				end = e.End()
			} else if start >= 0 {
				break
			}
		}
		if start >= 0 {
			return start, min(end, size), nil
		}
		pos = w.to
	}
	return 0, 0, io.EOF
}

// zeroInBoth merges two base:allocation answers for the same range: a
// region is zero only where both say so.
func zeroInBoth(a, b []nbd.StatusExtent) []nbd.StatusExtent {
	end := min(a[len(a)-1].End(), b[len(b)-1].End())
	var out []nbd.StatusExtent
	i, j := 0, 0
	pos := a[0].Offset
	for pos < end && i < len(a) && j < len(b) {
		e := min(a[i].End(), b[j].End(), end)
		flags := uint32(0)
		if a[i].Flags&nbd.StateZero != 0 && b[j].Flags&nbd.StateZero != 0 {
			flags = nbd.StateZero
		}
		if k := len(out) - 1; k >= 0 && out[k].Flags == flags {
			out[k].Length = e - out[k].Offset
		} else {
			out = append(out, nbd.StatusExtent{Offset: pos, Length: e - pos, Flags: flags})
		}
		pos = e
		if a[i].End() <= pos {
			i++
		}
		if b[j].End() <= pos {
			j++
		}
	}
	return out
}
