package hydrate

import (
	"io"
	"os"
)

// File is what hydrate needs of the target and of its own state files
// (bitmap, journal). *os.File implements it; the power-loss tests use
// files that keep unsynced writes apart and lose them at a cut.
//
// Sync promises what fsync promises: every write that returned before it
// is durable when it returns. Nothing is promised about unsynced writes:
// after a power loss any subset of them, torn at any sector, may be on
// disk.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

var _ File = (*os.File)(nil)
