package blockstore

import (
	"bytes"
	"testing"
)

func FuzzDecodeSegment(f *testing.F) {
	id := MapID{1, 2, 3}
	f.Add(int64(0), 2, encodeSegment(id, 0, []Hash{HashBlock([]byte("a")), {}}))
	f.Add(int64(5), 1, []byte{})
	f.Add(int64(0), 1, make([]byte, 48))
	f.Fuzz(func(t *testing.T, seg int64, n int, v []byte) {
		hs, err := DecodeSegment(id, seg, n, v)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeSegment(id, seg, hs), v) {
			t.Fatal("a decoded segment does not encode back to the same bytes")
		}
	})
}
