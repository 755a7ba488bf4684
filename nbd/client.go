package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Target is a parsed NBD URI.
type Target struct {
	Network, Address, Export string
}

// ParseURI parses nbd://host[:port]/export and
// nbd+unix:///export?socket=/path (the forms qemu and libnbd use).
func ParseURI(uri string) (Target, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Target{}, fmt.Errorf("NBD URI %q: %w", uri, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		host := u.Host
		if host == "" {
			return Target{}, fmt.Errorf("NBD URI %q: no host", uri)
		}
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		return Target{"tcp", host, export}, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return Target{}, fmt.Errorf("NBD URI %q: nbd+unix needs ?socket=PATH", uri)
		}
		return Target{"unix", sock, export}, nil
	}
	return Target{}, fmt.Errorf("NBD URI %q: scheme %q not supported (use nbd:// or nbd+unix://)", uri, u.Scheme)
}

// Client is a userspace NBD client: it negotiates with NBD_OPT_GO and
// keeps many requests in flight on one connection, matching replies by
// cookie. It is safe for concurrent use. Go-nbd's client drives only the
// kernel's /dev/nbdX, which these machines lack; this one needs nothing.
type Client struct {
	conn     net.Conn
	w        *bufio.Writer
	wmu      sync.Mutex
	size     int64
	flags    uint16
	pref     uint32
	maxChunk int

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set when the connection broke
	done    chan struct{}
}

type call struct {
	buf  []byte // read destination
	err  error
	done chan struct{}
}

// ErrRemote is an error reply from the server.
type ErrRemote struct{ Code uint32 }

func (e *ErrRemote) Error() string {
	return fmt.Sprintf("NBD server error %d (%s)", e.Code, syscall.Errno(e.Code))
}

// Dial connects to an NBD URI and negotiates the export.
func Dial(ctx context.Context, uri string) (*Client, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return DialTarget(ctx, t, uri)
}

// DialTarget connects to a parsed target and negotiates the export; uri
// names it in errors.
func DialTarget(ctx context.Context, t Target, uri string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, t.Network, t.Address)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", uri, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	c := &Client{conn: nc, w: bufio.NewWriterSize(nc, 256<<10), pending: map[uint64]*call{}, done: make(chan struct{}), maxChunk: 4 << 20}
	r := bufio.NewReaderSize(nc, 256<<10)
	if err := c.negotiate(r, t.Export); err != nil {
		nc.Close()
		return nil, fmt.Errorf("negotiate with %s: %w", uri, err)
	}
	nc.SetDeadline(time.Time{})
	go c.readLoop(r)
	return c, nil
}

func (c *Client) negotiate(r *bufio.Reader, export string) error {
	be := binary.BigEndian
	var hs struct {
		Magic, Opt uint64
		Flags      uint16
	}
	if err := binary.Read(r, be, &hs); err != nil {
		return err
	}
	if hs.Magic != magicNBD || hs.Opt != magicOption {
		return fmt.Errorf("not an NBD newstyle server")
	}
	if hs.Flags&flagFixedNewstyle == 0 {
		return fmt.Errorf("server does not speak fixed newstyle")
	}
	cflags := clientFixed
	if hs.Flags&flagNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	b := be.AppendUint32(nil, cflags)
	// NBD_OPT_GO with a request for block sizes.
	data := be.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, infoBlockSize)
	b = be.AppendUint64(b, magicOption)
	b = be.AppendUint32(b, optGo)
	b = be.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	for {
		var rh struct {
			Magic       uint64
			Opt, Typ, N uint32
		}
		if err := binary.Read(r, be, &rh); err != nil {
			return err
		}
		if rh.Magic != magicRepOpt || rh.N > maxOptionLength {
			return fmt.Errorf("bad option reply")
		}
		payload := make([]byte, rh.N)
		if _, err := io.ReadFull(r, payload); err != nil {
			return err
		}
		switch {
		case rh.Typ == repAck:
			if c.size == 0 && c.flags == 0 {
				return fmt.Errorf("server sent no export information")
			}
			return nil
		case rh.Typ == repInfo && len(payload) >= 2:
			switch be.Uint16(payload) {
			case infoExport:
				if len(payload) >= 12 {
					c.size = int64(be.Uint64(payload[2:]))
					c.flags = be.Uint16(payload[10:])
				}
			case infoBlockSize:
				if len(payload) >= 14 {
					c.pref = be.Uint32(payload[6:])
					if mx := int(be.Uint32(payload[10:])); mx > 0 && mx < c.maxChunk {
						c.maxChunk = mx
					}
				}
			}
		case rh.Typ&(1<<31) != 0:
			return fmt.Errorf("export %q: %s (code %#x)", export, payload, rh.Typ)
		}
	}
}

// Size returns the export size.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server marked the export read-only.
func (c *Client) ReadOnly() bool { return c.flags&tflagReadOnly != 0 }

func (c *Client) readLoop(r *bufio.Reader) {
	be := binary.BigEndian
	h := make([]byte, 16)
	var err error
	for {
		if _, err = io.ReadFull(r, h); err != nil {
			break
		}
		if be.Uint32(h) != magicSimple {
			err = fmt.Errorf("unexpected reply magic %#x", be.Uint32(h))
			break
		}
		code, cookie := be.Uint32(h[4:]), be.Uint64(h[8:])
		c.mu.Lock()
		cl := c.pending[cookie]
		delete(c.pending, cookie)
		c.mu.Unlock()
		if cl == nil {
			err = fmt.Errorf("reply for unknown cookie %d", cookie)
			break
		}
		if code != 0 {
			cl.err = &ErrRemote{code}
		} else if cl.buf != nil {
			if _, err = io.ReadFull(r, cl.buf); err != nil {
				cl.err = err
				close(cl.done)
				break
			}
		}
		close(cl.done)
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("NBD connection lost: %w", err)
	}
	for k, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, k)
	}
	c.mu.Unlock()
	close(c.done)
}

// do sends one request and waits for its reply.
func (c *Client) do(typ, flags uint16, off int64, length uint32, payload, dst []byte) error {
	cl := &call{buf: dst, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.next++
	cookie := c.next
	c.pending[cookie] = cl
	c.mu.Unlock()
	h := make([]byte, 28)
	be := binary.BigEndian
	be.PutUint32(h, magicRequest)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], cookie)
	be.PutUint64(h[16:], uint64(off))
	be.PutUint32(h[24:], length)
	c.wmu.Lock()
	_, err := c.w.Write(h)
	if err == nil && payload != nil {
		_, err = c.w.Write(payload)
	}
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.conn.Close()
		<-cl.done
		return err
	}
	<-cl.done
	return cl.err
}

// ReadAt reads len(p) bytes at off, in parallel requests of at most the
// server's maximum payload.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), c.size-off)
	chunk := int64(min(c.maxChunk, 256<<10))
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for pos := int64(0); pos < want; pos += chunk {
		n := min(chunk, want-pos)
		wg.Add(1)
		go func(pos, n int64) {
			defer wg.Done()
			if err := c.do(cmdRead, 0, off+pos, uint32(n), nil, p[pos:pos+n]); err != nil {
				once.Do(func() { firstErr = fmt.Errorf("NBD read at %d: %w", off+pos, err) })
			}
		}(pos, n)
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	for pos := 0; pos < len(p); pos += c.maxChunk {
		n := min(c.maxChunk, len(p)-pos)
		if err := c.do(cmdWrite, 0, off+int64(pos), uint32(n), p[pos:pos+n], nil); err != nil {
			return pos, fmt.Errorf("NBD write at %d: %w", off+int64(pos), err)
		}
	}
	return len(p), nil
}

// Flush asks the server to make writes durable.
func (c *Client) Flush() error { return c.do(cmdFlush, 0, 0, 0, nil, nil) }

// Close says goodbye and closes the connection.
func (c *Client) Close() error {
	h := make([]byte, 28)
	be := binary.BigEndian
	be.PutUint32(h, magicRequest)
	be.PutUint16(h[6:], cmdDisc)
	c.wmu.Lock()
	c.w.Write(h)
	c.w.Flush()
	c.wmu.Unlock()
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
