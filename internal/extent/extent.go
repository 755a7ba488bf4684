// Package extent describes a disk's allocation as runs: which bytes read
// as zeroes and are not allocated (holes) and which hold data. Devices
// compute extents from their blocks (a backup volume from its block map,
// an instant-restore disk from its bitmap and the backup); the NBD server
// reports them to clients as base:allocation, which lets qemu-img and
// nbdcopy skip holes.
package extent

// Extent is a run of a device with the same allocation state.
type Extent struct {
	Length int64
	Hole   bool // not allocated
	Zero   bool // reads as zeroes
}

// Max is the most extents FromBlocks returns for one query; a client
// asks again from where the answer ended.
const Max = 1024

// FromBlocks builds the extents of [off, off+n) on a device of bs-byte
// blocks from a per-block test: a zero block is a hole that reads as
// zeroes, any other is data. Neighbouring runs of the same kind are
// merged; the first and last run may cover part of a block. It stops
// after Max extents, and returns the first error of isZero.
func FromBlocks(off, n, bs int64, isZero func(i int64) (bool, error)) ([]Extent, error) {
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
			if len(out) == Max {
				break
			}
			out = append(out, Extent{Length: l, Hole: z, Zero: z})
		}
		pos += l
	}
	return out, nil
}
