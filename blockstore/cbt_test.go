package blockstore

import (
	"bytes"
	"context"
	"io"
	"sync/atomic"
	"testing"
)

// changedSource is a disk whose changes since a parent are known: the
// extents a QEMU dirty bitmap would report.
type changedSource struct {
	memSource
	changed [][2]int64    // sorted, disjoint [start, end)
	reads   *atomic.Int64 // ingest reads from several workers at once
}

func (c changedSource) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(int64(len(p)))
	return c.memSource.ReadAt(p, off)
}

func (c changedSource) NextChanged(_ context.Context, off int64) (int64, int64, error) {
	for _, e := range c.changed {
		if e[1] > off {
			return e[0], e[1], nil
		}
	}
	return 0, 0, io.EOF
}

// changeBlocks overwrites the given 4 KiB blocks of a copy of base and
// returns it with the changed extents.
func changeBlocks(base []byte, blocks ...int) ([]byte, [][2]int64) {
	out := bytes.Clone(base)
	var ext [][2]int64
	for _, b := range blocks {
		off := int64(b) * 4096
		for i := off; i < off+4096 && i < int64(len(out)); i++ {
			out[i] ^= 0x5a
		}
		ext = append(ext, [2]int64{off, min(off+4096, int64(len(out)))})
	}
	return out, ext
}

func TestChangedBlockTracking(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{BlockSize: 4096})
	base := randomDisk(71, 4<<20+1000) // odd size: a partial last block
	parent := ingestCommit(t, s, base, MapID{})
	nblocks := int(blocksFor(int64(len(base)), 4096))
	for _, tc := range []struct {
		name    string
		changed []int
		grow    int
	}{
		{"nothing changed", nil, 0},
		{"a few blocks", []int{0, 7, 500, nblocks - 1}, 0},
		{"a run", []int{100, 101, 102, 103}, 0},
		{"disk grew", []int{3}, 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, ext := changeBlocks(base, tc.changed...)
			if tc.grow > 0 {
				data = append(data, randomDisk(72, tc.grow)...)
			}
			var reads atomic.Int64
			p, err := s.Ingest(ctx, changedSource{memSource{data}, ext, &reads}, IngestOptions{Parent: &parent})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx, []*PendingMap{p}, nil); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, s, p.Info.ID, data, "CBT backup")
			// Only the changed blocks and what lies beyond the parent's
			// end (its partial last block included) are read.
			want := int64(len(tc.changed))*4096 + int64(len(data)) - int64(len(base)) + 4096
			if reads.Load() > want {
				t.Fatalf("read %d bytes, want at most %d", reads.Load(), want)
			}
			if p.Info.Stats.ParentBlocks == 0 {
				t.Fatalf("no block taken from the parent: %+v", p.Info.Stats)
			}
		})
	}
}

// TestCBTParentBlockMissing: a block of the parent that scrub removed is
// read from the source, not referred to.
func TestCBTParentBlockMissing(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{BlockSize: 4096})
	base := randomDisk(73, 1<<20)
	parent := ingestCommit(t, s, base, MapID{})
	var h Hash
	for i := int64(0); h.IsZero(); i++ {
		h, _ = s.BlockHash(parent.ID, i)
	}
	corruptBlock(t, s, h)
	if _, err := s.Scrub(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	p, err := s.Ingest(ctx, changedSource{memSource{base}, nil, &reads}, IngestOptions{Parent: &parent})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []*PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	if p.Info.Stats.ParentMissing != 1 || reads.Load() != 4096 {
		t.Fatalf("missing parent block: stats %+v, read %d bytes", p.Info.Stats, reads.Load())
	}
	mustEqual(t, s, p.Info.ID, base, "CBT backup with a repaired block")
	mustEqual(t, s, parent.ID, base, "the parent, repaired by it")
}
