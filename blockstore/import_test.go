package blockstore

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// replicateInto copies map id of src into dst through an import, putting
// only the blocks for which keep returns true, and returns the import.
func replicateInto(t *testing.T, src, dst *Store, id MapID, keep func(i int) bool) *Import {
	t.Helper()
	ctx := context.Background()
	info, err := src.MapInfo(id)
	if err != nil {
		t.Fatal(err)
	}
	im, err := dst.BeginImport(ctx, info.Size)
	if err != nil {
		t.Fatal(err)
	}
	err = src.MapHashes(ctx, id, func(seg int64, hs []Hash) error { return im.WriteSegment(seg, hs) })
	if err != nil {
		t.Fatal(err)
	}
	putMissing(t, src, im, keep)
	return im
}

func putMissing(t *testing.T, src *Store, im *Import, keep func(i int) bool) int {
	t.Helper()
	ctx := context.Background()
	missing, err := im.Missing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var batch []BlockValue
	for i, h := range missing {
		if !keep(i) {
			continue
		}
		v, err := src.StoredValue(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, BlockValue{h, v})
	}
	if err := im.PutBlocks(ctx, batch); err != nil {
		t.Fatal(err)
	}
	return len(missing)
}

func TestImportReplicatesAMap(t *testing.T) {
	ctx := context.Background()
	src := newTestStore(t, Options{BlockSize: 4096})
	dst := newTestStore(t, Options{BlockSize: 4096, Codec: CodecRaw})
	data := randomDisk(81, 3<<20+7)
	info := ingestCommit(t, src, data, MapID{})
	im := replicateInto(t, src, dst, info.ID, func(int) bool { return true })
	// Staged: no backup yet.
	if _, err := dst.OpenVolume(im.ID()); !errors.Is(err, ErrMapNotFound) {
		t.Fatalf("staged map opens: %v", err)
	}
	if maps, _ := dst.ListMaps(); len(maps) != 0 {
		t.Fatalf("staged map listed: %v", maps)
	}
	if rep, err := dst.Scrub(ctx, nil); err != nil || len(rep.DamagedMaps) != 0 {
		t.Fatalf("scrub of a store with a staged map: %+v %v", rep, err)
	}
	p, err := im.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Commit(ctx, []*PendingMap{p}, nil); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, dst, im.ID(), data, "replica")
	// An incremental: only the changed blocks are missing.
	changed := mutate(data, 82, 0.02)
	info2 := ingestCommit(t, src, changed, MapID{})
	im2 := replicateInto(t, src, dst, info2.ID, func(int) bool { return true })
	p2, err := im2.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Commit(ctx, []*PendingMap{p2}, nil); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, dst, im2.ID(), changed, "incremental replica")
}

// TestImportResumesAndSurvivesGC: half the blocks arrive, GC runs, the
// store restarts; the resumed import lacks only the other half, and the
// replica completes.
func TestImportResumesAndSurvivesGC(t *testing.T) {
	ctx := context.Background()
	src := newTestStore(t, Options{BlockSize: 4096})
	dir := filepath.Join(t.TempDir(), "dst")
	dst, err := Open(dir, Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	data := randomDisk(83, 2<<20)
	info := ingestCommit(t, src, data, MapID{})
	im := replicateInto(t, src, dst, info.ID, func(i int) bool { return i%2 == 0 })
	id := im.ID()
	if _, err := dst.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if dst, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := dst.GC(ctx); err != nil {
		t.Fatal(err)
	}
	im, err = dst.ResumeImport(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	_ = src.MapHashes(ctx, info.ID, func(_ int64, hs []Hash) error {
		for _, h := range hs {
			if !h.IsZero() {
				total++
			}
		}
		return nil
	})
	n := putMissing(t, src, im, func(int) bool { return true })
	if n > total/2+1 {
		t.Fatalf("after resume %d of %d blocks are missing; the half that arrived was lost", n, total)
	}
	if _, err := im.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestImportRefusesBadValuesAndAborts(t *testing.T) {
	ctx := context.Background()
	src := newTestStore(t, Options{BlockSize: 4096})
	dst := newTestStore(t, Options{BlockSize: 4096})
	data := randomDisk(84, 1<<20)
	info := ingestCommit(t, src, data, MapID{})
	im := replicateInto(t, src, dst, info.ID, func(int) bool { return false })
	missing, err := im.Missing(ctx)
	if err != nil || len(missing) == 0 {
		t.Fatalf("missing: %d %v", len(missing), err)
	}
	v, err := src.StoredValue(ctx, missing[0])
	if err != nil {
		t.Fatal(err)
	}
	v[len(v)/2] ^= 1
	var ce *CorruptBlockError
	if err := im.PutBlocks(ctx, []BlockValue{{missing[0], v}}); !errors.As(err, &ce) {
		t.Fatalf("corrupt value accepted: %v", err)
	}
	if ok, _ := dst.HasBlock(missing[0]); ok {
		t.Fatal("a value that does not verify was stored")
	}
	if _, err := im.Finish(ctx); !errors.Is(err, ErrImportIncomplete) {
		t.Fatalf("finish of an incomplete import: %v", err)
	}
	putMissing(t, src, im, func(int) bool { return true })
	if err := dst.AbortImport(ctx, im.ID()); err != nil {
		t.Fatal(err)
	}
	st, err := dst.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FreedBlocks == 0 {
		t.Fatalf("blocks of an aborted import not freed: %+v", st)
	}
	assertOnlyMapFilesOf(t, dst)
}
