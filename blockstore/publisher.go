package blockstore

import (
	"context"
	"errors"
	"sync"
)

// publisher seals and indexes an ingest's full packs in the background,
// so that hashing and compression go on while a pack is synced (or
// uploaded, for an object store). One pack is published at a time and
// one more may wait; the ingest blocks beyond that. Blocks of a pack not
// yet published are simply not found by lookups (and not candidates for
// GC) until it is; an ingest returns only after all its packs are.
type publisher struct {
	s    *Store
	ctx  context.Context
	ch   chan *packWriter
	done chan struct{}

	mu     sync.Mutex
	err    error
	closed bool
}

func (s *Store) newPublisher(ctx context.Context) *publisher {
	p := &publisher{s: s, ctx: ctx, ch: make(chan *packWriter, 1), done: make(chan struct{})}
	go p.loop()
	return p
}

func (p *publisher) loop() {
	defer close(p.done)
	for pw := range p.ch {
		if p.failed() != nil {
			pw.release()
			continue
		}
		if _, err := p.s.publishPack(p.ctx, pw); err != nil {
			p.mu.Lock()
			if p.err == nil {
				p.err = err
			}
			p.mu.Unlock()
		}
	}
}

func (p *publisher) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// submit queues a full pack; it fails with the first publishing error.
func (p *publisher) submit(pw *packWriter) error {
	if err := p.failed(); err != nil {
		pw.release()
		return err
	}
	select {
	case p.ch <- pw:
		return nil
	case <-p.ctx.Done():
		pw.release()
		return p.ctx.Err()
	}
}

// wait publishes what is queued and returns the first error. Safe to
// call more than once.
func (p *publisher) wait() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.ch)
	}
	p.mu.Unlock()
	<-p.done
	return p.failed()
}

// abandon drops whatever is still queued (the ingest failed) and waits
// for the pack being published.
func (p *publisher) abandon() {
	p.mu.Lock()
	if p.err == nil {
		p.err = errAbandoned
	}
	p.mu.Unlock()
	p.wait()
}

var errAbandoned = errors.New("ingest abandoned")
