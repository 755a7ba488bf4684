package hydrate

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// failingFile fails its next write once armed, as a target that ran out
// of space or hit a bad sector would.
type failingFile struct {
	*memFile
	armed atomic.Bool
}

func (f *failingFile) WriteAt(p []byte, off int64) (int, error) {
	if f.armed.CompareAndSwap(true, false) {
		return 0, errors.New("injected: no space left on device")
	}
	return f.memFile.WriteAt(p, off)
}

// TestFailedWriteGetsNoBit: a guest write or TRIM whose target write
// fails is not acknowledged, and the sync point after it must not make
// the block's bit durable: after a restart the block holds the backup's
// bytes, not whatever the target had. (The journal used to count the
// block as soon as its records were written, before the data.)
func TestFailedWriteGetsNoBit(t *testing.T) {
	const bs = 16 << 10
	size := 8 * bs
	base := disk(5, size)
	for i := range base {
		base[i] |= 1 // no zero block: every block is the backup's own
	}
	vol := backupBS(t, base, bs)
	for _, op := range []string{"write", "trim"} {
		t.Run(op, func(t *testing.T) {
			md := &memDisk{rng: rand.New(rand.NewPCG(1, 1))}
			target := &failingFile{memFile: md.file("target", nil)}
			target.Truncate(int64(size))
			target.Sync()
			bm, err := NewBitmap(md.file("bits", nil), [2]File{md.file("j0", nil), md.file("j1", nil)}, int64(size/bs), bs, int64(size))
			if err != nil {
				t.Fatal(err)
			}
			dev, err := NewDevice(vol, target, bm, true)
			if err != nil {
				t.Fatal(err)
			}
			const i = 2
			target.armed.Store(true)
			switch op {
			case "write":
				_, err = dev.WriteAt(bytes.Repeat([]byte{0xAB}, bs), i*bs)
			case "trim":
				err = dev.Trim(i*bs, bs)
			}
			if err == nil {
				t.Fatalf("%s did not fail", op)
			}
			if err := dev.Flush(); err != nil {
				t.Fatal(err)
			}
			if dev.bm.Durable(i) && !dev.bm.Has(i) {
				t.Fatalf("after the failed %s and a flush: the bit is durable with no data behind it", op)
			}
			dev2, err := openMem(t, &memDisk{}, vol, md.cut())
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, bs)
			if _, err := dev2.ReadAt(got, i*bs); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, base[i*bs:(i+1)*bs]) {
				t.Fatalf("block %d after restart is not the backup's (first bytes %x)", i, got[:8])
			}
		})
	}
}
