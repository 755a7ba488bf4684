package nbd

import (
	"csbs/blockstore"
	"csbs/internal/extent"
)

// VolumeDevice serves a backup volume read-only, with allocation from
// its block map: zero blocks are holes, so clients skip them.
type VolumeDevice struct{ *blockstore.Volume }

var (
	_ Device   = VolumeDevice{}
	_ Extenter = VolumeDevice{}
)

// Extents reports runs of zero (hole) and data blocks in [off, off+n).
func (v VolumeDevice) Extents(off, n int64) ([]extent.Extent, error) {
	return extent.FromBlocks(off, n, int64(v.BlockSize()), func(i int64) (bool, error) {
		h, err := v.BlockHash(i)
		return h.IsZero(), err
	})
}
