// Package restore writes a backed-up disk to a target: a new or existing
// image file (sparse: zero blocks become holes) or a block device.
//
// A file target is written under a temporary name in the target's
// directory and renamed into place only when complete and synced, so a
// failed restore (disk full, corrupt block, cancellation) leaves nothing
// half-written under the target's name. A block device is written in
// place; a failure there is reported with the offset reached.
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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"csbs/blockstore"
	"csbs/internal/durable"
)

// Volume is the backed-up disk to restore; *blockstore.Volume implements
// it. Block must return a full, verified block and may be called
// concurrently.
type Volume interface {
	Size() int64
	BlockSize() int
	BlockHash(i int64) (blockstore.Hash, error)
	Block(ctx context.Context, i int64) ([]byte, error)
}

var _ Volume = (*blockstore.Volume)(nil)

// ErrTargetNotEmpty means the target holds data and Force was not given.
var ErrTargetNotEmpty = errors.New("target is not empty (use --force to overwrite)")

// Options tune a restore.
type Options struct {
	// Force allows overwriting a non-empty target.
	Force bool
	// Workers is the number of parallel block fetchers; default 4.
	Workers int
	// Verify re-reads the target after writing and compares every block
	// with its hash (blocks are always verified when read from the store).
	Verify bool
	// Progress, if set, receives bytes done and total; calls are serialised.
	Progress func(done, total int64)
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
		opt.Workers = 4
	}
	t, err := openTarget(target, vol.Size(), opt.Force)
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
	path    string
	tmp     string // "" for a block device written in place
	f       *os.File
	isFile  bool
	replace bool // rename over an existing file
}

func openTarget(path string, size int64, force bool) (*target, error) {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return newFileTarget(path, size, false)
	case err != nil:
		return nil, err
	case fi.Mode()&os.ModeSymlink != 0:
		return nil, fmt.Errorf("target is a symbolic link; name the file or device itself")
	case fi.IsDir():
		return nil, fmt.Errorf("target is a directory")
	case fi.Mode().IsRegular():
		if fi.Size() > 0 && !force {
			return nil, fmt.Errorf("%w: file has %d bytes", ErrTargetNotEmpty, fi.Size())
		}
		return newFileTarget(path, size, true)
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		return openDeviceTarget(path, size, force)
	}
	return nil, fmt.Errorf("target is neither a file nor a block device (%s)", fi.Mode().Type())
}

func newFileTarget(path string, size int64, replace bool) (*target, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".csbs-partial-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("size target to %d bytes: %w", size, err)
	}
	return &target{path: path, tmp: tmp, f: f, isFile: true, replace: replace}, nil
}

func openDeviceTarget(path string, size int64, force bool) (*target, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
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
	return &target{path: path, f: f}, nil
}

func (t *target) commit() error {
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	if err := t.f.Close(); err != nil {
		return err
	}
	if !t.isFile {
		return nil
	}
	if t.replace {
		if err := os.Rename(t.tmp, t.path); err != nil {
			return err
		}
	} else if err := os.Link(t.tmp, t.path); err != nil {
		// Link refuses to replace a target that appeared meanwhile.
		return err
	} else if err := os.Remove(t.tmp); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(t.path))
}

func (t *target) abort() {
	t.f.Close()
	if t.tmp != "" {
		os.Remove(t.tmp)
	}
}

const chunkBlocks = 16

func copyBlocks(ctx context.Context, vol Volume, t *target, opt Options) (Result, error) {
	size, bs := vol.Size(), int64(vol.BlockSize())
	nblocks := (size + bs - 1) / bs
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var done, dataBlocks, zeroBlocks atomic.Int64
	var progressMu sync.Mutex
	chunks := make(chan int64)
	var wg sync.WaitGroup
	zero := make([]byte, bs)
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := range chunks {
				if err := copyChunk(ctx, vol, t, first, min(first+chunkBlocks, nblocks), zero, &dataBlocks, &zeroBlocks); err != nil {
					cancel(err)
					return
				}
				d := done.Add(min(chunkBlocks*bs, size-first*bs))
				if opt.Progress != nil {
					progressMu.Lock()
					opt.Progress(d, size)
					progressMu.Unlock()
				}
			}
		}()
	}
feed:
	for first := int64(0); first < nblocks; first += chunkBlocks {
		select {
		case chunks <- first:
		case <-ctx.Done():
			break feed
		}
	}
	close(chunks)
	wg.Wait()
	if ctx.Err() != nil {
		return Result{}, context.Cause(ctx)
	}
	return Result{Bytes: size, DataBlocks: dataBlocks.Load(), ZeroBlocks: zeroBlocks.Load()}, nil
}

func copyChunk(ctx context.Context, vol Volume, t *target, from, to int64, zero []byte, data, zeros *atomic.Int64) error {
	bs, size := int64(vol.BlockSize()), vol.Size()
	for i := from; i < to; i++ {
		off := i * bs
		n := min(bs, size-off)
		h, err := vol.BlockHash(i)
		if err != nil {
			return err
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
			if b, err = vol.Block(ctx, i); err != nil {
				return err
			}
		}
		if _, err := t.f.WriteAt(b[:n], off); err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
	}
	return nil
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
