package blockstore

import (
	"fmt"
	"syscall"
)

// Badger writes its value log and memtables through mmap. On a full file
// system a write to a mapped page is not an error the program can handle:
// the kernel sends SIGBUS and the daemon dies. So the store keeps a
// reserve of free space that covers what the mapped files may still need
// (two value-log files and the memtables), and ingest stops with ENOSPC
// before the file system gets there.
const (
	valueLogFileSize = 128 << 20
	memTableSize     = 32 << 20
	// DefaultMinFree is the default reserve: 2 value-log files, 2
	// memtables and 64 MiB of slack for the LSM tree and the catalog.
	DefaultMinFree = 2*valueLogFileSize + 2*memTableSize + 64<<20
)

// FreeBytes returns the bytes available on the store's file system.
func (s *Store) FreeBytes() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", s.dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// checkSpace fails with ENOSPC when writing need more bytes would eat into
// the reserve.
func (s *Store) checkSpace(need int64) error {
	free, err := s.FreeBytes()
	if err != nil {
		return err
	}
	if free-need < s.opts.MinFree {
		return fmt.Errorf("store %s: %w: %d MiB free, csbs keeps %d MiB in reserve (Badger maps its files into memory and would crash on a full disk); free space or run csbs gc",
			s.dir, syscall.ENOSPC, free>>20, s.opts.MinFree>>20)
	}
	return nil
}

// CheckSpace fails with ENOSPC when writing need more bytes would eat into the reserve.
func (s *Store) CheckSpace(need int64) error { return s.checkSpace(need) }
