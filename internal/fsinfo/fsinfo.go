// Package fsinfo describes files for the checks and messages of the
// packages that open host paths (disk sources, restore targets, sockets).
package fsinfo

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Kind names a file type (the S_IFMT bits of mode) for messages.
func Kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFIFO:
		return "a FIFO (named pipe)"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return "an unknown file type"
}

// FDPath returns the path the kernel reports for an open file
// descriptor (a path with no symlinks left).
func FDPath(fd int) (string, error) {
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", fmt.Errorf("real path of an open file: %w", err)
	}
	return p, nil
}
