package hydrate

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkGuestWrite4K is a 4 KiB guest write at a random aligned
// offset, on os files in the temp dir: "journaled" while the blocks'
// bits are not durable yet (each write records its sector first),
// "durable" once they are (no record).
func BenchmarkGuestWrite4K(b *testing.B) {
	size := 64 << 20
	vol := backup(b, disk(5, size))
	for _, mode := range []string{"journaled", "durable"} {
		b.Run(mode, func(b *testing.B) {
			d := openDevice(b, vol, b.TempDir())
			defer d.Close()
			if mode == "durable" {
				if err := NewHydrator(d, 0).Run(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			r := rand.New(rand.NewPCG(1, 2))
			p := make([]byte, 4096)
			b.SetBytes(4096)
			for b.Loop() {
				if _, err := d.WriteAt(p, r.Int64N(int64(size/4096))*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
