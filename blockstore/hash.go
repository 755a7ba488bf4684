package blockstore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// HashSize is the size of a block key in bytes.
const HashSize = 32

// Hash is the BLAKE3-256 of a block's bytes. The zero Hash marks an all-zero
// block in a map (BLAKE3 of real data is never all zeros in practice).
type Hash [HashSize]byte

// HashBlock returns the BLAKE3-256 of b.
func HashBlock(b []byte) Hash { return blake3.Sum256(b) }

// IsZero reports whether h is the zero-block marker.
func (h Hash) IsZero() bool { return h == Hash{} }

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MapID names a block map. It is random, so ids from crashed ingests are
// never reused.
type MapID [16]byte

// NewMapID returns a fresh random map id.
func NewMapID() MapID {
	var id MapID
	if _, err := rand.Read(id[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return id
}

// ParseMapID parses the hex form produced by MapID.String.
func ParseMapID(s string) (MapID, error) {
	var id MapID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("map id %q: want %d hex characters", s, 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

// IsZero reports whether id is unset.
func (id MapID) IsZero() bool { return id == MapID{} }

func (id MapID) String() string { return hex.EncodeToString(id[:]) }

// IsZeroBlock reports whether b is all zero bytes.
func IsZeroBlock(b []byte) bool {
	// Eight bytes at a time; a 64 KiB block costs ~2 µs.
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
