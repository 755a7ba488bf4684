package blockstore

import "sync"

// gcGate is the handshake between ingests and garbage collection.
//
// The danger: an ingest finds block h already stored and refers to it
// (dedupe), while a concurrent GC, which did not see h in any map, sweeps
// it. The rule that prevents it: every hash an ingest refers to is "held"
// from before the ingest looks it up until the segment that records it is
// visible in the database. GC sweeps a block only if it is unmarked by the
// maps it scanned AND not held AND not released during the GC run; the
// check and the deletion happen under the gate's lock, and hold takes the
// same lock. So either the hold comes first (GC sees it and keeps h) or the
// deletion commits first (the ingest's lookup then misses h and writes it
// again). A hash released while GC runs may have been recorded in a
// segment GC had already scanned, so release moves it to the GC's touched
// set, which sweep also honours.
type gcGate struct {
	mu      sync.Mutex
	refs    map[*ingestRef]struct{}
	gcOn    bool
	touched map[Hash]struct{}
}

// ingestRef is one ingest's multiset of held hashes.
type ingestRef struct {
	g    *gcGate
	held map[Hash]int
}

func newGCGate() *gcGate { return &gcGate{refs: map[*ingestRef]struct{}{}} }

func (g *gcGate) register() *ingestRef {
	r := &ingestRef{g: g, held: map[Hash]int{}}
	g.mu.Lock()
	g.refs[r] = struct{}{}
	g.mu.Unlock()
	return r
}

func (g *gcGate) unregister(r *ingestRef) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gcOn {
		for h := range r.held {
			g.touched[h] = struct{}{}
		}
	}
	delete(g.refs, r)
}

func (r *ingestRef) hold(h Hash) {
	r.g.mu.Lock()
	r.held[h]++
	r.g.mu.Unlock()
}

func (r *ingestRef) release(hs []Hash) {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	for _, h := range hs {
		if n := r.held[h]; n <= 1 {
			delete(r.held, h)
		} else {
			r.held[h] = n - 1
		}
		if r.g.gcOn {
			r.g.touched[h] = struct{}{}
		}
	}
}

// touch tells a running GC that hs were just recorded in a map it may
// have read already (an import's segment): its sweep keeps them.
func (g *gcGate) touch(hs []Hash) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.gcOn {
		return
	}
	for _, h := range hs {
		if !h.IsZero() {
			g.touched[h] = struct{}{}
		}
	}
}

// protectedLocked reports whether h must survive the current sweep.
// The caller holds g.mu.
func (g *gcGate) protectedLocked(h Hash) bool {
	if _, ok := g.touched[h]; ok {
		return true
	}
	for r := range g.refs {
		if r.held[h] > 0 {
			return true
		}
	}
	return false
}
