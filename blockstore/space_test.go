package blockstore

import (
	"context"
	"testing"
)

// TestGCGivesSpaceBack measures what the user pays: bytes the file system
// gets back, not keys deleted. On the store before packs, deleting every
// backup and running GC left the store at its full size (106 MiB of 106,
// also after a restart). Now: deleting every backup brings the store to
// within 64 MiB of an empty one, and deleting half of the unique data
// returns at least 90% of what that half occupied.
func TestGCGivesSpaceBack(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{Codec: CodecZstd})
	usage := func() int64 {
		t.Helper()
		n, err := s.DiskUsage()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	empty := usage()
	// Two servers with unrelated data, each backed up twice (a changed
	// copy the second time).
	var first, second []MapID
	var mid int64
	for k := range 2 {
		base := randomDisk(uint64(200+k), 48<<20)
		first = append(first, ingestCommit(t, s, base, MapID{}).ID)
		second = append(second, ingestCommit(t, s, mutate(base, uint64(300+k), 0.1), MapID{}).ID)
		if k == 0 {
			mid = usage()
		}
	}
	full := usage()
	// Retention deletes every backup of the second server: half the
	// unique data.
	halfBytes := full - mid
	for _, id := range []MapID{first[1], second[1]} {
		if err := deleteMapQuiet(s, id); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	afterHalf := usage()
	freed := full - afterHalf
	t.Logf("empty %d MiB; full %d MiB; after deleting half %d MiB (GC freed %d blocks, deleted %d packs, repacked %d)",
		empty>>20, full>>20, afterHalf>>20, st.FreedBlocks, st.PacksDeleted, st.PacksRepacked)
	if want := halfBytes * 9 / 10; freed < want {
		t.Fatalf("deleting the backups that added %d MiB freed %d MiB, want ≥ 90%%", halfBytes>>20, freed>>20)
	}
	for _, id := range []MapID{first[0], second[0]} {
		if err := deleteMapQuiet(s, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	after := usage()
	t.Logf("after deleting every backup and GC: %d MiB (empty store: %d MiB)", after>>20, empty>>20)
	if after-empty > 64<<20 {
		t.Fatalf("store with no backups occupies %d MiB, an empty one %d MiB", after>>20, empty>>20)
	}
	st2, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Blocks != 0 || st2.Packs != 0 || st2.Maps != 0 {
		t.Fatalf("store with no backups still has %+v", st2)
	}
}

// TestGCRepacksPartlyLivePacks: a backup whose blocks half survive in a
// newer backup leaves packs half garbage when it is deleted. GC copies
// the live half out and deletes the old packs: the file system gets back
// at least 90% of the bytes that became garbage, and both the newer
// backup and reads during the move stay exact.
func TestGCRepacksPartlyLivePacks(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{Codec: CodecRaw, BlockSize: 16 << 10})
	x := randomDisk(400, 32<<20)
	xp := mutate(x, 401, 0.5)
	a := ingestCommit(t, s, x, MapID{})
	b := ingestCommit(t, s, xp, MapID{})
	before, _ := s.DiskUsage()
	stBefore, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := deleteMapQuiet(s, a.ID); err != nil {
		t.Fatal(err)
	}
	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := s.DiskUsage()
	if st.PacksRepacked == 0 {
		t.Fatalf("no pack repacked: %+v", st)
	}
	t.Logf("GC freed %d stored bytes; disk %d → %d MiB; repacked %d packs (%d MiB copied)",
		st.FreedBytes, before>>20, after>>20, st.PacksRepacked, st.BytesRepacked>>20)
	if got := before - after; got < st.FreedBytes*9/10 {
		t.Fatalf("GC freed %d bytes of blocks but the file system got back %d", st.FreedBytes, got)
	}
	stAfter, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if garbage := stAfter.PackBytes - stAfter.StoredBytes; garbage > stAfter.StoredBytes/10 {
		t.Fatalf("packs hold %d bytes beyond %d live after GC (before: %+v)", garbage, stAfter.StoredBytes, stBefore)
	}
	mustEqual(t, s, b.ID, xp, "after repack")
}
