package hydrate

import "testing"

func FuzzDecodeBitmap(f *testing.F) {
	f.Add(append(encodeHeader(10, 4096, 40000), 0xff, 0x03), int64(10), 4096, int64(40000))
	f.Add([]byte("CSBSHYD1"), int64(1), 4096, int64(1))
	f.Fuzz(func(t *testing.T, data []byte, nblocks int64, bs int, size int64) {
		if nblocks < 0 || nblocks > 1<<30 {
			return
		}
		bits, err := DecodeBitmap(data, nblocks, bs, size)
		if err == nil && int64(len(bits)) != (nblocks+7)/8 {
			t.Fatalf("accepted %d bitmap bytes for %d blocks", len(bits), nblocks)
		}
	})
}
