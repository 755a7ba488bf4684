package blockstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/zeebo/blake3"
)

// writeLegacyStore writes a format-1 store (blocks and segments in
// Badger, as csbs kept them before packs) holding disks, plus one catalog
// key, and returns the map ids.
func writeLegacyStore(t *testing.T, dir string, bs int, disks [][]byte) []MapID {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	wb := db.NewWriteBatch()
	set := func(k, v []byte) {
		if err := wb.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	set([]byte("meta/format"), []byte("1"))
	set([]byte("meta/blocksize"), []byte(strconv.Itoa(bs)))
	set([]byte("c/test/catalog"), []byte("kept"))
	var ids []MapID
	for _, d := range disks {
		id := NewMapID()
		ids = append(ids, id)
		n := blocksFor(int64(len(d)), bs)
		var seg []Hash
		flush := func(i int64) {
			allZero := true
			var body []byte
			for _, h := range seg {
				allZero = allZero && h.IsZero()
				body = append(body, h[:]...)
			}
			if !allZero {
				sum := blake3.Sum256(body)
				k := binary.BigEndian.AppendUint64(append([]byte("s/"), id[:]...), uint64(i))
				set(k, append(body, sum[:16]...))
			}
			seg = seg[:0]
		}
		for i := int64(0); i < n; i++ {
			b := make([]byte, bs)
			copy(b, d[i*int64(bs):])
			h := Hash{}
			if !IsZeroBlock(b) {
				h = HashBlock(b)
				set(append([]byte("b/"), h[:]...), append([]byte{byte(CodecRaw)}, b...))
			}
			seg = append(seg, h)
			if len(seg) == SegmentEntries {
				flush(i / SegmentEntries)
			}
		}
		if len(seg) > 0 {
			flush((n - 1) / SegmentEntries)
		}
		hdr, _ := json.Marshal(MapInfo{Size: int64(len(d)), BlockSize: bs, Created: time.Now().UTC()})
		set(append([]byte("m/"), id[:]...), hdr)
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestUpgradeFromFormat1 opens a store written by csbs before packs: it
// is upgraded in place, every backup reads back exactly, the catalog is
// kept, and a leftover of an interrupted upgrade does not get in the way.
func TestUpgradeFromFormat1(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	disks := [][]byte{randomDisk(61, 5<<20+123), randomDisk(62, 300<<10), make([]byte, 1<<20)}
	ids := writeLegacyStore(t, dir, 4096, disks)
	// A crash of an earlier upgrade attempt left a half-built directory.
	if err := os.MkdirAll(dir+".upgrade/maps", 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a format-1 store succeeded")
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		mustEqual(t, s, id, disks[i], "upgraded map")
	}
	err = s.db.View(func(txn *badger.Txn) error {
		v, err := getValue(txn, []byte("c/test/catalog"))
		if err == nil && string(v) != "kept" {
			t.Errorf("catalog key holds %q", v)
		}
		return err
	})
	if err != nil {
		t.Fatalf("catalog key after upgrade: %v", err)
	}
	if _, err := os.Stat(dir + ".upgrade"); !os.IsNotExist(err) {
		t.Fatalf("upgrade directory left behind: %v", err)
	}
	if _, err := os.Stat(dir + ".old"); !os.IsNotExist(err) {
		t.Fatalf("old store left behind: %v", err)
	}
	checkInvariants(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash between the two renames: the new store waits under .upgrade.
	if err := os.Rename(dir, dir+".upgrade"); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustEqual(t, s, ids[0], disks[0], "after finishing an interrupted swap")
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, s, ids[1], disks[1], "after GC of an upgraded store")
}
