package nbd

import (
	"context"

	"csbs/blockstore"
	"csbs/internal/extent"
)

// VolumeDevice serves a backup volume read-only, with allocation from
// its block map: zero blocks are holes, so clients skip them.
type VolumeDevice struct{ *blockstore.Volume }

var (
	_ Device          = VolumeDevice{}
	_ Extenter        = VolumeDevice{}
	_ Cacher          = VolumeDevice{}
	_ ContextReaderAt = VolumeDevice{}
	_ CachedReader    = VolumeDevice{}
)

// Cache loads the blocks of [off, off+n) ahead of the client's reads
// (into the volume's read cache file when it has one).
func (v VolumeDevice) Cache(ctx context.Context, off, n int64) error {
	return v.Prefetch(ctx, off, n)
}

// Extents reports runs of zero (hole) and data blocks in [off, off+n).
func (v VolumeDevice) Extents(off, n int64) ([]extent.Extent, error) {
	return extent.FromBlocks(off, n, int64(v.BlockSize()), func(i int64) (bool, error) {
		h, err := v.BlockHash(i)
		return h.IsZero(), err
	})
}
