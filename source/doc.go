// Package source opens the disks of cloud servers for backup: a raw image
// file, a block device, or an NBD export (nbd://host:port/name or
// nbd+unix:///name?socket=PATH) read with the package nbd client. Every source is a
// blockstore.Source; file sources are also blockstore.SparseSource, found
// with SEEK_DATA/SEEK_HOLE so that holes in sparse images are not read.
package source
