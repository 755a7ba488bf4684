package remote

import (
	"bytes"
	"testing"

	"csbs/blockstore"
)

// FuzzWire feeds arbitrary bytes to the parsers of what crosses the wire
// between appliances: a source parses block requests from any holder of
// a replication token, a destination parses the map and block streams of
// a remote. Neither may panic or return a map that does not match its
// digests.
func FuzzWire(f *testing.F) {
	var m bytes.Buffer
	w, _ := NewMapWriter(&m, MapHeader{Size: 3 << 16, BlockSize: 1 << 16, Base: true})
	_ = w.Segment(0, hashes(3, 1), hashes(3, 2))
	_ = w.End()
	f.Add(m.Bytes())
	f.Add(EncodeBlockRequest([]BlockRef{{Disk: 1, Index: 2, Hash: hashes(1, 1)[0]}}))
	var b bytes.Buffer
	WriteBlock(&b, BlockOK, []byte("v"))
	WriteBlock(&b, BlockDamaged, []byte("bad"))
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = DecodeBlockRequest(data)
		base := func(seg int64, n int) ([]blockstore.Hash, error) { return hashes(n, byte(seg)), nil }
		_, _ = ReadMap(bytes.NewReader(data), base, func(h MapHeader, seg int64, hs []blockstore.Hash) error {
			if len(hs) != h.SegmentEntries(seg) {
				t.Fatalf("segment %d of %d hashes, the header says %d", seg, len(hs), h.SegmentEntries(seg))
			}
			return nil
		})
		refs := []BlockRef{{}, {}}
		_ = ReadBlocks(bytes.NewReader(data), refs, 1<<20, func(int, []byte) error { return nil })
	})
}
