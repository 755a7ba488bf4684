package blockstore

import (
	"encoding/binary"
	"math"
)

// bloom is the set GC marks live blocks in and scrub records present
// blocks in: a Bloom filter, so that memory stays bounded by the number of
// blocks (bloomBitsPerBlock bits each: 2.5 bytes, 40 MiB per TiB of unique
// data at 64 KiB blocks) instead of growing with whole hashes. A false
// positive (probability about 7e-5 per block) can only make GC keep a
// garbage block, or make scrub miss a block that is missing for a reason
// other than scrub's own findings (those are checked exactly).
type bloom struct {
	bits []uint64
	m    uint64 // number of bits
	k    int
}

const bloomBitsPerBlock = 20

// newBloom returns a filter sized for n blocks.
func newBloom(n int64) *bloom {
	n = max(n, 1024)
	m := uint64(n) * bloomBitsPerBlock
	k := int(math.Round(bloomBitsPerBlock * math.Ln2))
	return &bloom{bits: make([]uint64, (m+63)/64), m: m, k: k}
}

// indexes derives the k bit positions from the hash itself: BLAKE3 output
// is uniform, so two 64-bit words of it give independent double hashing.
func (b *bloom) positions(h Hash, fn func(pos uint64) bool) bool {
	h1 := binary.LittleEndian.Uint64(h[0:8])
	h2 := binary.LittleEndian.Uint64(h[8:16]) | 1
	for i := range b.k {
		if !fn((h1 + uint64(i)*h2) % b.m) {
			return false
		}
	}
	return true
}

func (b *bloom) add(h Hash) {
	b.positions(h, func(p uint64) bool {
		b.bits[p/64] |= 1 << (p % 64)
		return true
	})
}

// has reports whether h may be in the set (never false for an added h).
func (b *bloom) has(h Hash) bool {
	return b.positions(h, func(p uint64) bool { return b.bits[p/64]&(1<<(p%64)) != 0 })
}

// bytes is the filter's memory.
func (b *bloom) bytes() int64 { return int64(len(b.bits)) * 8 }
