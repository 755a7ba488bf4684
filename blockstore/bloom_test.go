package blockstore

import (
	"encoding/binary"
	"testing"
)

func TestBloom(t *testing.T) {
	const n = 200000
	b := newBloom(n)
	h := func(i int) Hash {
		var x [8]byte
		binary.LittleEndian.PutUint64(x[:], uint64(i))
		return HashBlock(x[:])
	}
	for i := range n {
		b.add(h(i))
	}
	for i := range n {
		if !b.has(h(i)) {
			t.Fatalf("added hash %d not found", i)
		}
	}
	fp := 0
	for i := n; i < 3*n; i++ {
		if b.has(h(i)) {
			fp++
		}
	}
	if rate := float64(fp) / (2 * n); rate > 5e-4 {
		t.Fatalf("false positive rate %.5f, want about 7e-5", rate)
	}
	if per := float64(b.bytes()) / n; per > 3 {
		t.Fatalf("%.1f bytes per block", per)
	}
}
