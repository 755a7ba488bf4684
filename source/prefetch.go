package source

import (
	"context"
	"sync"
	"sync/atomic"
)

// prefetcher reads ahead of a reader that goes through the disk in order
// and reads exactly the block runs the ingest pipeline will ask for: runs
// of store blocks that hold data and, reading changed blocks only, that
// the dirty bitmap marks, cut at the pipeline's item boundaries. It asks
// the server for its own extents (its windows run ahead of the reader's).
// A read it did not predict is read directly, so a wrong guess costs
// time, never correctness. The pipeline's workers read their items at
// once, so reads arrive a little out of order: a range is dropped once
// every byte of it was read, or, unread (a wrong guess), after many reads
// since it was planned. A read beyond what is planned does not move the
// plan: the reads before it are still to come.
type prefetcher struct {
	bs          int64 // store block size
	item        int64 // pipeline item size (runs never cross its boundaries)
	changedOnly bool
	ahead       int64 // bytes fetched ahead at most
	maxRanges   int

	// hits and misses count reads served from the read-ahead and not.
	hits, misses atomic.Int64

	mu      sync.Mutex
	nreads  int64 // reads so far
	next    int64 // planned up to here
	done    bool  // nothing left to plan
	ranges  []*fetched
	bytes   int64 // in ranges
	alloc   extentWindow
	changed extentWindow
}

type fetched struct {
	off  int64
	buf  []byte
	used int64 // bytes served from it (under prefetcher.mu)
	seq  int64 // prefetcher.nreads when it was planned
	err  error
	done chan struct{}
}

// staleReads is how many reads after it was planned a range is dropped
// unread: far more than the reads of the pipeline's items in flight,
// which may come before it.
const staleReads = 1024

// Prefetch turns on read-ahead for a reader that reads in disk order,
// as blockstore's ingest does, with its block size; changedOnly when it
// reads only the changed blocks (a parent is given). At most ahead bytes
// are fetched ahead, in requests of at most one pipeline item.
func (d *NBD) Prefetch(blockSize int64, changedOnly bool, ahead int64) {
	if blockSize <= 0 {
		return
	}
	item := max(1, (1<<20)/blockSize) * blockSize // blockstore's itemBytes per item, whole blocks
	d.pf = &prefetcher{bs: blockSize, item: item, changedOnly: changedOnly, ahead: ahead, maxRanges: 256}
}

// read serves p at off from a fetched range, if one covers it, and
// plans more.
func (pf *prefetcher) read(d *NBD, p []byte, off int64) (int, bool) {
	pf.mu.Lock()
	pf.nreads++
	pf.drop(func(r *fetched) bool { return pf.nreads-r.seq > staleReads })
	pf.plan(d)
	var hit *fetched
	for _, r := range pf.ranges {
		if r.off <= off && off+int64(len(p)) <= r.off+int64(len(r.buf)) {
			hit = r
			break
		}
	}
	if hit != nil {
		// The pipeline reads each block once: a range read to its last
		// byte is done with.
		hit.used += int64(len(p))
		pf.drop(func(r *fetched) bool { return r == hit && r.used >= int64(len(r.buf)) })
	}
	pf.mu.Unlock()
	if hit == nil {
		pf.misses.Add(1)
		return 0, false
	}
	<-hit.done
	if hit.err != nil {
		pf.misses.Add(1)
		return 0, false // read directly: the error, if real, comes again
	}
	pf.hits.Add(1)
	return copy(p, hit.buf[off-hit.off:]), true
}

// drop forgets the ranges for which gone is true; the caller holds mu.
func (pf *prefetcher) drop(gone func(*fetched) bool) {
	k := 0
	for _, r := range pf.ranges {
		if gone(r) {
			pf.bytes -= int64(len(r.buf))
			continue
		}
		pf.ranges[k] = r
		k++
	}
	clear(pf.ranges[k:])
	pf.ranges = pf.ranges[:k]
}

// plan starts fetches until ahead bytes are in flight or cached.
func (pf *prefetcher) plan(d *NBD) {
	ctx := context.Background()
	size := d.Size()
	for !pf.done && pf.bytes < pf.ahead && len(pf.ranges) < pf.maxRanges && pf.next < size {
		start, ok := pf.firstRead(ctx, d, pf.next)
		if !ok {
			pf.done = true
			return
		}
		end := start + pf.bs
		limit := min((start/pf.item+1)*pf.item, size)
		for end < limit && pf.reads(ctx, d, end) {
			end += pf.bs
		}
		end = min(end, size)
		r := &fetched{off: start, buf: make([]byte, end-start), seq: pf.nreads, done: make(chan struct{})}
		pf.ranges = append(pf.ranges, r)
		pf.bytes += end - start
		pf.next = end
		go func() {
			// Ranges end at the export's end at the latest, so any error,
			// io.EOF too, is a failed read: the reader reads for itself.
			_, r.err = d.c.ReadAt(r.buf, r.off)
			close(r.done)
		}()
	}
}

// reads reports whether the pipeline reads the block at off.
func (pf *prefetcher) reads(ctx context.Context, d *NBD, off int64) bool {
	end := min(off+pf.bs, d.Size())
	s, _, err := d.nextData(ctx, &pf.alloc, off)
	if err != nil || s >= end {
		return false
	}
	if !pf.changedOnly {
		return true
	}
	s, _, err = d.nextChanged(ctx, &pf.changed, off)
	return err == nil && s < end
}

// firstRead finds the first block at or after pos that the pipeline
// reads.
func (pf *prefetcher) firstRead(ctx context.Context, d *NBD, pos int64) (int64, bool) {
	for pos < d.Size() {
		s, _, err := d.nextData(ctx, &pf.alloc, pos)
		if err != nil {
			return 0, false
		}
		if pf.changedOnly {
			c, _, err := d.nextChanged(ctx, &pf.changed, pos)
			if err != nil {
				return 0, false
			}
			s = max(s, c)
		}
		b := s / pf.bs * pf.bs
		if pf.reads(ctx, d, b) {
			return b, true
		}
		pos = b + pf.bs
	}
	return 0, false
}

// PrefetchStats returns how many reads the read-ahead served and missed.
func (d *NBD) PrefetchStats() (hits, misses int64) {
	if d.pf == nil {
		return 0, 0
	}
	return d.pf.hits.Load(), d.pf.misses.Load()
}
