package blockstore

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileCache keeps read-only file descriptors open for packs and map
// files, LRU-bounded. A descriptor in use is never closed under its
// reader: acquire counts references, and forget (the file is being
// deleted) or eviction close it only once the last reader releases it.
type fileCache struct {
	mu    sync.Mutex
	limit int
	lru   *list.List // of *cachedFile, front = newest
	files map[string]*cachedFile
}

type cachedFile struct {
	key     string
	f       *os.File
	refs    int
	dropped bool // evicted or forgotten: close at the last release
	elem    *list.Element
}

func newFileCache(limit int) *fileCache {
	return &fileCache{limit: limit, lru: list.New(), files: map[string]*cachedFile{}}
}

// acquire returns the open file at path; call release when done.
func (c *fileCache) acquire(path string) (*cachedFile, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf, ok := c.files[path]; ok {
		cf.refs++
		c.lru.MoveToFront(cf.elem)
		return cf, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	cf := &cachedFile{key: path, f: f, refs: 1}
	cf.elem = c.lru.PushFront(cf)
	c.files[path] = cf
	for c.lru.Len() > c.limit {
		old := c.lru.Back().Value.(*cachedFile)
		if old.refs > 0 {
			break // every older file is busy; the cache runs over its limit briefly
		}
		c.dropLocked(old)
	}
	return cf, nil
}

func (c *fileCache) release(cf *cachedFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cf.refs--
	if cf.refs == 0 && cf.dropped {
		cf.f.Close()
	}
}

func (c *fileCache) dropLocked(cf *cachedFile) {
	if cf.dropped {
		return
	}
	cf.dropped = true
	c.lru.Remove(cf.elem)
	delete(c.files, cf.key)
	if cf.refs == 0 {
		cf.f.Close()
	}
}

// forget closes the cached descriptor of path (after its readers), so a
// deleted file's space is freed.
func (c *fileCache) forget(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf, ok := c.files[path]; ok {
		c.dropLocked(cf)
	}
}

func (c *fileCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cf := range c.files {
		c.dropLocked(cf)
	}
}

// syncDir makes a directory's entries (a new, renamed or removed file)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// fdatasync flushes a file's data (and the metadata needed to read it).
func fdatasync(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return nil
}

// allocatedBytes returns the bytes the regular files under dir occupy on
// disk (st_blocks, not the apparent size: Badger preallocates sparse
// files, and a store is judged by what the file system gives up for it).
func allocatedBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		} else {
			total += fi.Size()
		}
		return nil
	})
	return total, err
}
