package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// PackStore is where sealed packs live: a directory of files (LocalPacks)
// or, for the object-store backend, a bucket. It is the one seam between
// "the index and the catalog in Badger" and "where block bytes live".
// Implementations are safe for concurrent use. Packs are immutable: a
// number names the same bytes for as long as the pack exists.
type PackStore interface {
	// Put makes the sealed pack in the local file at staged (size bytes,
	// already synced) durable as pack num. The staged file is consumed.
	Put(ctx context.Context, num uint64, staged string, size int64) error
	// ReadAt reads len(p) bytes of pack num at off. A pack that does not
	// exist fails with an error that wraps ErrPackNotFound.
	ReadAt(ctx context.Context, num uint64, p []byte, off int64) (int, error)
	// Delete removes pack num. Deleting a missing pack is not an error.
	Delete(ctx context.Context, num uint64) error
	// List calls fn for every pack held, in no particular order.
	List(ctx context.Context, fn func(num uint64, size int64) error) error
	// Close releases what the store holds open.
	Close() error
}

// LocalPacks keeps packs as files under a directory, spread over 256
// subdirectories by the low byte of the pack number.
type LocalPacks struct {
	dir   string
	files *fileCache

	mu      sync.Mutex
	created map[string]bool // subdirectories known to exist
}

var _ PackStore = (*LocalPacks)(nil)

// NewLocalPacks returns a pack store in dir, creating it if needed.
func NewLocalPacks(dir string) (*LocalPacks, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pack directory %s: %w", dir, err)
	}
	return &LocalPacks{dir: dir, files: newFileCache(256), created: map[string]bool{}}, nil
}

func (l *LocalPacks) sub(num uint64) string {
	return filepath.Join(l.dir, fmt.Sprintf("%02x", num&0xff))
}

func (l *LocalPacks) path(num uint64) string {
	return filepath.Join(l.sub(num), fmt.Sprintf("%016x.pack", num))
}

// Put renames the staged file into place and syncs the directory.
func (l *LocalPacks) Put(ctx context.Context, num uint64, staged string, size int64) error {
	IOCounterFrom(ctx).AddPut(size)
	sub := l.sub(num)
	l.mu.Lock()
	known := l.created[sub]
	l.mu.Unlock()
	if !known {
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return fmt.Errorf("pack directory %s: %w", sub, err)
		}
		if err := syncDir(l.dir); err != nil {
			return err
		}
		l.mu.Lock()
		l.created[sub] = true
		l.mu.Unlock()
	}
	if err := os.Rename(staged, l.path(num)); err != nil {
		return fmt.Errorf("put pack %016x: %w", num, err)
	}
	return syncDir(sub)
}

// ReadAt reads from the pack file through a cache of open descriptors.
func (l *LocalPacks) ReadAt(ctx context.Context, num uint64, p []byte, off int64) (int, error) {
	IOCounterFrom(ctx).AddGet(int64(len(p)))
	cf, err := l.files.acquire(l.path(num))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("pack %016x: %w", num, ErrPackNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("open pack %016x: %w", num, err)
	}
	defer l.files.release(cf)
	n, err := cf.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("read pack %016x at %d: %w", num, off, err)
	}
	return n, nil
}

// Delete unlinks the pack; readers that have it open finish first.
func (l *LocalPacks) Delete(_ context.Context, num uint64) error {
	p := l.path(num)
	l.files.forget(p)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete pack %016x: %w", num, err)
	}
	return nil
}

// List walks the subdirectories.
func (l *LocalPacks) List(ctx context.Context, fn func(num uint64, size int64) error) error {
	subs, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("list packs in %s: %w", l.dir, err)
	}
	for _, sub := range subs {
		if !sub.IsDir() {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(l.dir, sub.Name()))
		if err != nil {
			return fmt.Errorf("list packs in %s: %w", sub.Name(), err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			name, ok := strings.CutSuffix(e.Name(), ".pack")
			if !ok {
				continue
			}
			num, err := strconv.ParseUint(name, 16, 64)
			if err != nil {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue // deleted meanwhile
			}
			if err := fn(num, fi.Size()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close closes every cached descriptor.
func (l *LocalPacks) Close() error {
	l.files.close()
	return nil
}
