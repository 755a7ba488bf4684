// Package testproxy is a TCP proxy for tests that counts the bytes that
// cross it (what two appliances send each other on the wire) and can
// break its connections at a chosen byte, as a failing network would.
package testproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards connections from Addr to a target address.
type Proxy struct {
	Addr   string
	target string
	l      net.Listener
	up     atomic.Int64 // client → target
	down   atomic.Int64 // target → client
	cutAt  atomic.Int64 // down-byte count at which every connection breaks; 0 = none
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// Start listens on a loopback port and forwards to target until the
// test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.relay(c)
		}()
	}
}

func (p *Proxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) relay(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	// Small buffers of its own, so that what the proxy counts is what
	// the client's side accepted, as on a wire, and not what waits in the
	// proxy's kernel buffers.
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(64 << 10)
	}
	if tc, ok := s.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	p.track(c, true)
	p.track(s, true)
	defer p.track(c, false)
	defer p.track(s, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(countWriter{s, &p.up}, c)
		halfClose(s)
	}()
	p.pipeDown(c, s)
	<-done
}

// pipeDown relays target → client, breaking every connection at the
// byte CutAfter named.
func (p *Proxy) pipeDown(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			b, cut := buf[:n], false
			if at := p.cutAt.Load(); at > 0 {
				if left := at - p.down.Load(); left <= int64(n) {
					b, cut = b[:max(left, 0)], true
				}
			}
			w, werr := dst.Write(b)
			p.down.Add(int64(w))
			if cut {
				p.cutAt.Store(0)
				p.Cut()
				return
			}
			if werr != nil {
				return
			}
		}
		if err != nil {
			halfClose(dst)
			return
		}
	}
}

// halfClose lets the reader of c see the end of the stream.
func halfClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Bytes returns the bytes relayed so far in both directions.
func (p *Proxy) Bytes() int64 { return p.up.Load() + p.down.Load() }

// Down returns the bytes relayed from the target to clients.
func (p *Proxy) Down() int64 { return p.down.Load() }

// CutAfter breaks every connection once n more bytes went from the
// target to clients: the connection that carries byte n stops right
// there, in the middle of whatever it was sending. New connections are
// relayed again.
func (p *Proxy) CutAfter(n int64) { p.cutAt.Store(p.down.Load() + n) }

// Cut breaks every connection open now; new connections are relayed
// again.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	if err := p.l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return
	}
	p.Cut()
	p.wg.Wait()
}
