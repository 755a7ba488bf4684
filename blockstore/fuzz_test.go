package blockstore

import (
	"bytes"
	"testing"
)

func FuzzDecodeSegment(f *testing.F) {
	f.Add(encodeSegment([]Hash{HashBlock([]byte("a")), {}}))
	f.Add([]byte{})
	f.Add(make([]byte, 48))
	f.Fuzz(func(t *testing.T, v []byte) {
		hs, err := DecodeSegment(v)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeSegment(hs), v) {
			t.Fatal("a decoded segment does not encode back to the same bytes")
		}
	})
}
