package nbd

import (
	"context"

	"csbs/blockstore"
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
func (v VolumeDevice) Extents(off, n int64) ([]Extent, error) {
	return MapExtents(off, n, int64(v.BlockSize()), func(i int64) (bool, error) {
		h, err := v.BlockHash(i)
		return h.IsZero(), err
	})
}

// MapExtents builds extents over [off, off+n) from a per-block "is zero"
// test, coalescing runs. It stops after 1024 extents (a client asks again
// for the rest).
func MapExtents(off, n, bs int64, isZero func(i int64) (bool, error)) ([]Extent, error) {
	var out []Extent
	end := off + n
	for pos := off; pos < end; {
		i := pos / bs
		z, err := isZero(i)
		if err != nil {
			return nil, err
		}
		l := min((i+1)*bs, end) - pos
		if k := len(out) - 1; k >= 0 && out[k].Zero == z {
			out[k].Length += l
		} else {
			if len(out) == 1024 {
				break
			}
			out = append(out, Extent{Length: l, Hole: z, Zero: z})
		}
		pos += l
	}
	return out, nil
}
