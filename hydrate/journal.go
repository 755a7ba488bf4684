package hydrate

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/zeebo/blake3"
)

// Journal records. A record names one sector of the disk and the hash of
// the content a guest write gave it. Sectors are 4 KiB, the page size:
// a killed process can tear a write only at page boundaries, so the
// content of every sector after a kill is one that a record names.
const (
	sectorSize = 4096
	hashLen    = 16
	recordLen  = 8 + hashLen
)

type sectorSum [hashLen]byte

func sumSector(b []byte) sectorSum {
	h := blake3.Sum256(b)
	return sectorSum(h[:hashLen])
}

type record struct {
	sector int64
	sum    sectorSum
}

// journal is the write-ahead intent log of guest writes to blocks whose
// bitmap bit is not durable yet (see doc.go for the protocol). It has two
// files used in turn: a sync point makes the other file active, syncs the
// target, makes the bits of the blocks recorded in the inactive file
// durable and only then empties that file, while new writes go on
// recording in the active one.
type journal struct {
	mu     sync.Mutex
	files  [2]File
	size   [2]int64
	blocks [2]map[int64]struct{} // blocks with records in each file
	active int
	// carry holds the blocks of a sync point that failed after its swap:
	// their records stay in their file, and the next sync point settles
	// them.
	carry map[int64]struct{}
}

func newJournal(files [2]File) (*journal, error) {
	j := &journal{files: files, carry: map[int64]struct{}{}}
	for g, f := range files {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("hydration journal: %w", err)
		}
		j.size[g] = fi.Size()
		j.blocks[g] = map[int64]struct{}{}
	}
	return j, nil
}

// records reads every record of both files (for recovery at open).
func (j *journal) records() ([]record, error) {
	var out []record
	for g, f := range j.files {
		buf := make([]byte, j.size[g]-j.size[g]%recordLen)
		if _, err := f.ReadAt(buf, 0); err != nil && len(buf) > 0 {
			return nil, fmt.Errorf("read hydration journal: %w", err)
		}
		for off := 0; off < len(buf); off += recordLen {
			r := record{sector: int64(binary.BigEndian.Uint64(buf[off:]))}
			copy(r.sum[:], buf[off+8:])
			out = append(out, r)
		}
	}
	return out, nil
}

// add appends the records of a guest write and returns the file they
// went to. The block is not the file's yet: the writer marks it once its
// data is on the target, so that a write that failed never gets a bit.
// The caller holds the device's gate (read) from add until mark, which
// keeps the file active in between.
func (j *journal) add(recs []record) (int, error) {
	buf := make([]byte, 0, len(recs)*recordLen)
	for _, r := range recs {
		buf = binary.BigEndian.AppendUint64(buf, uint64(r.sector))
		buf = append(buf, r.sum[:]...)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	g := j.active
	if _, err := j.files[g].WriteAt(buf, j.size[g]); err != nil {
		return 0, fmt.Errorf("write hydration journal: %w", err)
	}
	j.size[g] += int64(len(buf))
	return g, nil
}

// mark makes block i, whose records add wrote to file g and whose data
// is now on the target, one whose bit the sync point after it makes
// durable. A record without its mark (the write failed) is harmless:
// recovery finds the sector unlike the record and the bit unset, and the
// block is hydrated as any other.
func (j *journal) mark(g int, i int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.blocks[g][i] = struct{}{}
}

// activeSize is the size of the file records go to.
func (j *journal) activeSize() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size[j.active]
}

// swap makes the other file active and returns the now inactive one and
// the blocks to settle: those it records and those carried over.
func (j *journal) swap() (int, []int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	old := j.active
	j.active = 1 - old
	var blocks []int64
	for i := range j.blocks[old] {
		blocks = append(blocks, i)
	}
	for i := range j.carry {
		if _, dup := j.blocks[old][i]; !dup {
			blocks = append(blocks, i)
		}
	}
	clear(j.blocks[old])
	slices.Sort(blocks)
	return old, blocks
}

// settled empties file g once the bits of its blocks are durable.
func (j *journal) settled(g int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	clear(j.carry)
	if err := j.files[g].Truncate(0); err != nil {
		return fmt.Errorf("empty hydration journal: %w", err)
	}
	j.size[g] = 0
	return nil
}

// failed keeps the blocks of a sync point that did not complete.
func (j *journal) failed(blocks []int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, i := range blocks {
		j.carry[i] = struct{}{}
	}
}

// reset empties both files after recovery settled every record.
func (j *journal) reset() error {
	for g := range j.files {
		if err := j.settled(g); err != nil {
			return err
		}
	}
	return nil
}

func (j *journal) close() error {
	return firstErr(j.files[0].Close(), j.files[1].Close())
}
