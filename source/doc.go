// Package source opens the disks of cloud servers for backup: a raw image
// file, a block device, or an NBD export (nbd://host:port/name or
// nbd+unix:///name?socket=PATH) read with the package nbd client. Every
// source is a blockstore.Source and a blockstore.SparseSource: file
// holes are found with SEEK_DATA/SEEK_HOLE, NBD holes with block status
// (base:allocation), and neither is read. An NBD source whose URI names a
// dirty bitmap (dirty-bitmap=NAME: QEMU's qemu:dirty-bitmap:NAME context)
// is also a blockstore.ChangedSource; whether its bitmap may be trusted
// against a parent backup is the caller's decision (package engine).
//
// Only regular files and block devices are disks: a FIFO, character
// device, socket or directory is refused (ErrNotADisk), and the open can
// never block, since the type is checked on an O_PATH handle before the
// file is opened for reading. A Guard sees where a source really is (the
// kernel's path of the opened file or socket, or an nbd:// address)
// before anything is read; the engine passes the host access rules.
package source
