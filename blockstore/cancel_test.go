package blockstore

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// slowPacks is a pack store whose reads take a while and honour their
// context, as the s3 backend's do.
type slowPacks struct{ *LocalPacks }

func (p slowPacks) ReadAt(ctx context.Context, num uint64, b []byte, off int64) (int, error) {
	select {
	case <-time.After(100 * time.Millisecond):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return p.LocalPacks.ReadAt(ctx, num, b, off)
}

// TestOneReadersCancelIsNotAnothers: reader B waits for the load of a
// block that reader A started; A goes away (its NBD connection broke) and
// its load is canceled. B, still live, gets the block, not A's
// "context canceled" (which a guest would see as an I/O error).
func TestOneReadersCancelIsNotAnothers(t *testing.T) {
	lp, err := NewLocalPacks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := newTestStore(t, Options{BlockSize: 16 << 10, Packs: slowPacks{lp}})
	data := randomDisk(12, 1<<20)
	info := ingestCommit(t, s, data, MapID{})
	s.TrimCache()
	v, err := s.OpenVolume(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	off := int64(-1)
	for i := int64(0); i < info.Blocks(); i++ {
		if h, _ := v.BlockHash(i); !h.IsZero() {
			off = i * v.bs
			break
		}
	}
	if off < 0 {
		t.Fatal("no data block")
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		v.ReadAtContext(ctxA, make([]byte, 4096), off)
	}()
	time.Sleep(20 * time.Millisecond) // A is loading the block
	go func() {
		time.Sleep(20 * time.Millisecond) // B waits for A's load
		cancelA()
	}()
	buf := make([]byte, 4096)
	if _, err := v.ReadAtContext(context.Background(), buf, off+4096); err != nil {
		t.Fatalf("reader B, never canceled, failed: %v", err)
	}
	if !bytes.Equal(buf, data[off+4096:off+8192]) {
		t.Fatal("reader B got wrong bytes")
	}
	<-aDone
}
