package nbd

import (
	"math/bits"
	"net"
	"sync"
	"time"
)

// replyWriter sends the replies of one connection. Replies are finished
// by many request goroutines at once; whichever kicks the writer while
// no write is in progress becomes the writer and sends everything
// queued, in one writev per round, until the queue is empty. So under load many replies
// share a system call, a reply's data goes from its buffer to the
// socket without being copied into a write buffer, and no goroutine
// waits for the socket unless it is the writer.
type replyWriter struct {
	conn    net.Conn
	timeout time.Duration

	mu      sync.Mutex
	queue   net.Buffers
	queued  int      // bytes in queue
	done    []func() // run once their reply is written (buffers back to pools)
	writing bool
	broken  bool
}

// queuedBytes is what waits to be sent.
func (w *replyWriter) queuedBytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.queued
}

// abandon gives up on whatever is still queued (the connection is
// ending): callbacks run, nothing more is written.
func (w *replyWriter) abandon() {
	w.mu.Lock()
	w.broken = true
	done := w.done
	w.done, w.queue, w.queued = nil, nil, 0
	w.mu.Unlock()
	for _, f := range done {
		f()
	}
}

// add queues a reply made of bufs; after runs once it is written (or
// the connection is dead), never before. Nothing is written until kick.
func (w *replyWriter) add(bufs [][]byte, after func()) {
	w.mu.Lock()
	if w.broken {
		w.mu.Unlock()
		if after != nil {
			after()
		}
		return
	}
	w.queue = append(w.queue, bufs...)
	for _, b := range bufs {
		w.queued += len(b)
	}
	if after != nil {
		w.done = append(w.done, after)
	}
	w.mu.Unlock()
}

// kick writes what is queued, unless another goroutine is writing (it
// writes this too before it stops).
func (w *replyWriter) kick() {
	w.mu.Lock()
	if w.writing || len(w.queue) == 0 {
		w.mu.Unlock()
		return
	}
	w.writing = true
	var q net.Buffers
	var done []func()
	for len(w.queue) > 0 && !w.broken {
		q, w.queue = w.queue, q[:0]
		done, w.done = w.done, done[:0]
		w.queued = 0
		w.mu.Unlock()
		// A client that stops reading replies must not hold buffers (and
		// the daemon's memory budget) for ever.
		w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
		all := q
		_, err := all.WriteTo(w.conn)
		for _, f := range done {
			f()
		}
		clear(q[:cap(q)])
		clear(done)
		w.mu.Lock()
		if err != nil {
			w.broken = true
			w.conn.Close() // the request reader notices and ends the connection
		}
	}
	w.writing = false
	var rest []func()
	if w.broken {
		rest, w.done, w.queue, w.queued = w.done, nil, nil, 0
	}
	w.mu.Unlock()
	for _, f := range rest { // queued after the connection broke
		f()
	}
}

// bufPool recycles read buffers by power-of-two size class, from 4 KiB
// to maxPayload.
type bufPool struct {
	classes [bufClasses]sync.Pool
}

const (
	minBufShift = 12
	bufClasses  = 26 - minBufShift // 4 KiB ... 32 MiB
)

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n.
func (p *bufPool) get(n int) []byte {
	c := bufClass(n)
	if c >= bufClasses {
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minBufShift))
}

// put returns a buffer from get.
func (p *bufPool) put(b []byte) {
	c := bufClass(cap(b))
	if c >= bufClasses || cap(b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(&b)
}
