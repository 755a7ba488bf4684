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

// MetaBaseAllocation is the standard block status context: bit 0 of an
// extent's flags is StateHole, bit 1 StateZero.
const MetaBaseAllocation = metaBaseAlloc

// Block status flags of the base:allocation context, and of QEMU's
// qemu:dirty-bitmap:NAME contexts.
const (
	StateHole  = stateHole // not allocated (may still read as non-zero)
	StateZero  = stateZero // reads as zeroes
	StateDirty = uint32(1) // qemu:dirty-bitmap: the extent changed
)

// MetaDirtyBitmap names QEMU's block status context for a dirty bitmap.
func MetaDirtyBitmap(name string) string { return "qemu:dirty-bitmap:" + name }

// Options tune a client.
type Options struct {
	// MetaContexts are block status contexts to ask for besides
	// base:allocation, for example MetaDirtyBitmap("b0"). A server that
	// does not offer one simply lacks it (see Client.HasContext).
	MetaContexts []string
	// InFlight caps the requests outstanding at once (default 32).
	InFlight int
	// ChunkSize is the largest read request (default 256 KiB, capped by
	// the server's maximum); a larger ReadAt is split into parallel
	// requests.
	ChunkSize int
}

// Client is a userspace NBD client: it negotiates with NBD_OPT_GO,
// structured replies and meta contexts (base:allocation and any asked
// for), and keeps many requests in flight on one connection, matching
// replies by cookie. It is safe for concurrent use. Go-nbd's client
// drives only the kernel's /dev/nbdX, which these machines lack; this one
// needs nothing.
//
// Servers without structured replies (or without block status) work:
// reads use simple replies and BlockStatus reports ErrNoBlockStatus.
type Client struct {
	conn       net.Conn
	w          *bufio.Writer
	wmu        sync.Mutex
	size       int64
	flags      uint16
	pref       uint32
	maxChunk   int
	structured bool
	contexts   map[string]uint32 // negotiated meta context → id
	slots      chan struct{}     // in-flight limit

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set when the connection broke
	done    chan struct{}
}

type call struct {
	typ    uint16
	off    int64  // request offset
	length int64  // request length
	buf    []byte // read destination
	got    int64  // bytes of buf filled by data and hole chunks
	status map[uint32][]StatusExtent
	err    error
	done   chan struct{}
}

// StatusExtent is one block status descriptor, at an absolute offset.
type StatusExtent struct {
	Offset, Length int64
	Flags          uint32
}

// End is the offset after the extent.
func (e StatusExtent) End() int64 { return e.Offset + e.Length }

// ErrRemote is an error reply from the server.
type ErrRemote struct {
	Code uint32
	Msg  string // structured replies may carry a message
}

func (e *ErrRemote) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("NBD server error %d (%s): %s", e.Code, syscall.Errno(e.Code), e.Msg)
	}
	return fmt.Sprintf("NBD server error %d (%s)", e.Code, syscall.Errno(e.Code))
}

// ErrNoBlockStatus is returned by BlockStatus when the server did not
// agree to the context asked for.
var ErrNoBlockStatus = errors.New("server offers no such block status context")

// ErrConnectionLost is the error of every request once the connection to
// the server broke. It never matches io.EOF, even when the server just
// closed the connection: io.EOF from ReadAt means reading past the end of
// the export, and a reader that took a dead server for the end of a disk
// would keep zeroes as its data.
var ErrConnectionLost = errors.New("NBD connection lost")

// Dial connects to an NBD URI and negotiates the export.
func Dial(ctx context.Context, uri string) (*Client, error) {
	return DialOptions(ctx, uri, Options{})
}

// DialOptions connects to an NBD URI with options.
func DialOptions(ctx context.Context, uri string, opt Options) (*Client, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return DialTargetOptions(ctx, t, uri, opt)
}

// DialTarget connects to a parsed target and negotiates the export; uri
// names it in errors.
func DialTarget(ctx context.Context, t Target, uri string) (*Client, error) {
	return DialTargetOptions(ctx, t, uri, Options{})
}

// DialTargetOptions is DialTarget with options.
func DialTargetOptions(ctx context.Context, t Target, uri string, opt Options) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, t.Network, t.Address)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", uri, err)
	}
	// Negotiation must not hang on a peer that is not an NBD server.
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	nc.SetDeadline(deadline)
	if opt.InFlight <= 0 {
		opt.InFlight = 32
	}
	if opt.ChunkSize <= 0 {
		opt.ChunkSize = 256 << 10
	}
	c := &Client{
		conn: nc, w: bufio.NewWriterSize(nc, 256<<10), pending: map[uint64]*call{}, done: make(chan struct{}),
		maxChunk: min(opt.ChunkSize, 32<<20), contexts: map[string]uint32{}, slots: make(chan struct{}, opt.InFlight),
	}
	r := bufio.NewReaderSize(nc, 256<<10)
	if err := c.negotiate(r, t.Export, opt.MetaContexts); err != nil {
		nc.Close()
		return nil, fmt.Errorf("negotiate with %s: %w", uri, err)
	}
	nc.SetDeadline(time.Time{})
	go c.readLoop(r)
	return c, nil
}

func (c *Client) sendOption(opt uint32, data []byte) error {
	be := binary.BigEndian
	b := be.AppendUint64(nil, magicOption)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.w.Flush()
}

// optReply reads one option reply.
func optReply(r *bufio.Reader, want uint32) (typ uint32, payload []byte, err error) {
	be := binary.BigEndian
	var rh struct {
		Magic       uint64
		Opt, Typ, N uint32
	}
	if err := binary.Read(r, be, &rh); err != nil {
		return 0, nil, err
	}
	if rh.Magic != magicRepOpt || rh.N > maxOptionLength {
		return 0, nil, fmt.Errorf("bad option reply")
	}
	if rh.Opt != want {
		return 0, nil, fmt.Errorf("reply to option %d while waiting for %d", rh.Opt, want)
	}
	payload = make([]byte, rh.N)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return rh.Typ, payload, nil
}

func appendName(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func (c *Client) negotiate(r *bufio.Reader, export string, metas []string) error {
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
	if _, err := c.w.Write(be.AppendUint32(nil, cflags)); err != nil {
		return err
	}

	// Structured replies: needed for block status; a server that refuses
	// them still serves reads with simple replies.
	if err := c.sendOption(optStructured, nil); err != nil {
		return err
	}
	for {
		typ, _, err := optReply(r, optStructured)
		if err != nil {
			return err
		}
		if typ == repAck {
			c.structured = true
		}
		if typ == repAck || typ&(1<<31) != 0 {
			break
		}
	}
	if c.structured {
		queries := append([]string{metaBaseAlloc}, metas...)
		data := appendName(nil, export)
		data = be.AppendUint32(data, uint32(len(queries)))
		for _, q := range queries {
			data = appendName(data, q)
		}
		if err := c.sendOption(optSetMetaCtx, data); err != nil {
			return err
		}
		for {
			typ, payload, err := optReply(r, optSetMetaCtx)
			if err != nil {
				return err
			}
			if typ == repMetaContext && len(payload) >= 4 {
				c.contexts[string(payload[4:])] = be.Uint32(payload)
				continue
			}
			if typ == repAck {
				break
			}
			if typ&(1<<31) != 0 {
				if typ == repErrUnknown {
					return fmt.Errorf("export %q: %s (code %#x)", export, payload, typ)
				}
				clear(c.contexts) // no block status; reads still work
				break
			}
		}
	}

	// NBD_OPT_GO with a request for block sizes.
	data := appendName(nil, export)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, infoBlockSize)
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	for {
		typ, payload, err := optReply(r, optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if c.size == 0 && c.flags == 0 {
				return fmt.Errorf("server sent no export information")
			}
			return nil
		case typ == repInfo && len(payload) >= 2:
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
		case typ&(1<<31) != 0:
			return fmt.Errorf("export %q: %s (code %#x)", export, payload, typ)
		}
	}
}

// Size returns the export size.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server marked the export read-only.
func (c *Client) ReadOnly() bool { return c.flags&tflagReadOnly != 0 }

// Structured reports whether the server agreed to structured replies.
func (c *Client) Structured() bool { return c.structured }

// HasContext reports whether the server agreed to a meta context.
func (c *Client) HasContext(name string) bool {
	_, ok := c.contexts[name]
	return ok
}

// errProtocol marks a reply the client cannot make sense of: the
// connection ends.
type errProtocol string

func (e errProtocol) Error() string { return "NBD protocol error: " + string(e) }

func (c *Client) readLoop(r *bufio.Reader) {
	be := binary.BigEndian
	h := make([]byte, 20)
	var err error
	for err == nil {
		if _, err = io.ReadFull(r, h[:4]); err != nil {
			break
		}
		switch be.Uint32(h) {
		case magicSimple:
			err = c.simpleReply(r, h)
		case magicStructRep:
			err = c.chunk(r, h)
		default:
			err = errProtocol(fmt.Sprintf("unexpected reply magic %#x", be.Uint32(h)))
		}
	}
	c.conn.Close()
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %v", ErrConnectionLost, err)
	}
	for k, cl := range c.pending {
		cl.err = c.err
		close(cl.done)
		delete(c.pending, k)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) take(cookie uint64, last bool) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	if last {
		delete(c.pending, cookie)
	}
	return cl
}

func (c *Client) simpleReply(r *bufio.Reader, h []byte) error {
	be := binary.BigEndian
	if _, err := io.ReadFull(r, h[4:16]); err != nil {
		return err
	}
	code, cookie := be.Uint32(h[4:]), be.Uint64(h[8:])
	cl := c.take(cookie, true)
	if cl == nil {
		return errProtocol(fmt.Sprintf("reply for unknown cookie %d", cookie))
	}
	defer close(cl.done)
	if code != 0 {
		cl.err = &ErrRemote{Code: code}
		return nil
	}
	if cl.typ == cmdRead {
		if _, err := io.ReadFull(r, cl.buf); err != nil {
			cl.err = err
			return err
		}
		cl.got = int64(len(cl.buf))
	}
	return nil
}

// chunk reads one structured reply chunk.
func (c *Client) chunk(r *bufio.Reader, h []byte) error {
	be := binary.BigEndian
	if _, err := io.ReadFull(r, h[4:20]); err != nil {
		return err
	}
	flags, typ, cookie, length := be.Uint16(h[4:]), be.Uint16(h[6:]), be.Uint64(h[8:]), be.Uint32(h[16:])
	last := flags&replyFlagDone != 0
	cl := c.take(cookie, last)
	if cl == nil {
		return errProtocol(fmt.Sprintf("reply chunk for unknown cookie %d", cookie))
	}
	if err := c.chunkPayload(r, cl, typ, length); err != nil {
		if last {
			cl.err = err
			close(cl.done)
		}
		return err
	}
	if last {
		if cl.err == nil && cl.typ == cmdRead && cl.got != int64(len(cl.buf)) {
			cl.err = errProtocol(fmt.Sprintf("read of %d bytes at %d answered with %d", len(cl.buf), cl.off, cl.got))
		}
		close(cl.done)
	}
	return nil
}

func (c *Client) chunkPayload(r *bufio.Reader, cl *call, typ uint16, length uint32) error {
	be := binary.BigEndian
	switch {
	case typ == chunkNone:
		if length != 0 {
			return errProtocol("NONE chunk with a payload")
		}
	case typ == chunkOffsetData || typ == chunkOffsetHole:
		if cl.typ != cmdRead {
			return errProtocol("data chunk for a request that is not a read")
		}
		var oh [12]byte
		n := 8
		if typ == chunkOffsetHole {
			n = 12
			if length != 12 {
				return errProtocol("hole chunk of the wrong size")
			}
		} else if length < 8 {
			return errProtocol("data chunk too short")
		}
		if _, err := io.ReadFull(r, oh[:n]); err != nil {
			return err
		}
		off := int64(be.Uint64(oh[:]))
		l := int64(length) - 8
		if typ == chunkOffsetHole {
			l = int64(be.Uint32(oh[8:]))
		}
		if off < cl.off || off+l > cl.off+int64(len(cl.buf)) || l < 0 {
			return errProtocol(fmt.Sprintf("chunk [%d, +%d) outside the read [%d, +%d)", off, l, cl.off, len(cl.buf)))
		}
		dst := cl.buf[off-cl.off : off-cl.off+l]
		if typ == chunkOffsetHole {
			clear(dst)
		} else if _, err := io.ReadFull(r, dst); err != nil {
			return err
		}
		cl.got += l
	case typ == chunkBlockStatus:
		if cl.typ != cmdBlockStatus || length < 4 || (length-4)%8 != 0 {
			return errProtocol("malformed block status chunk")
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		id := be.Uint32(b)
		pos := cl.off
		for p := 4; p < len(b); p += 8 {
			l := int64(be.Uint32(b[p:]))
			if l == 0 {
				return errProtocol("block status extent of length 0")
			}
			cl.status[id] = append(cl.status[id], StatusExtent{Offset: pos, Length: l, Flags: be.Uint32(b[p+4:])})
			pos += l
		}
	case typ&(1<<15) != 0: // an error chunk (known or not)
		if length < 6 || length > maxOptionLength {
			return errProtocol("malformed error chunk")
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		msgLen := int(be.Uint16(b[4:]))
		msg := ""
		if 6+msgLen <= len(b) {
			msg = string(b[6 : 6+msgLen])
		}
		if cl.err == nil {
			cl.err = &ErrRemote{Code: be.Uint32(b), Msg: msg}
		}
	default:
		return errProtocol(fmt.Sprintf("unknown reply chunk type %d", typ))
	}
	return nil
}

// do sends one request and waits for its reply.
func (c *Client) do(cl *call, flags uint16, payload []byte) error {
	c.slots <- struct{}{}
	defer func() { <-c.slots }()
	cl.done = make(chan struct{})
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
	be.PutUint16(h[6:], cl.typ)
	be.PutUint64(h[8:], cookie)
	be.PutUint64(h[16:], uint64(cl.off))
	be.PutUint32(h[24:], uint32(cl.length))
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
		return fmt.Errorf("%w: %v", ErrConnectionLost, err)
	}
	<-cl.done
	return cl.err
}

// ReadAt reads len(p) bytes at off, in parallel requests of at most the
// chunk size.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), c.size-off)
	chunk := int64(c.maxChunk)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for pos := int64(0); pos < want; pos += chunk {
		n := min(chunk, want-pos)
		wg.Add(1)
		go func(pos, n int64) {
			defer wg.Done()
			cl := &call{typ: cmdRead, off: off + pos, length: n, buf: p[pos : pos+n]}
			if err := c.do(cl, 0, nil); err != nil {
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

// BlockStatus asks for the status of [off, off+length) in the named meta
// context. The server may describe less than asked (ask again from the
// end of the last extent); extents are clipped to the request.
func (c *Client) BlockStatus(ctx context.Context, context string, off, length int64) ([]StatusExtent, error) {
	id, ok := c.contexts[context]
	if !ok {
		return nil, fmt.Errorf("block status %q: %w", context, ErrNoBlockStatus)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if off >= c.size {
		return nil, io.EOF
	}
	length = min(length, c.size-off, 1<<31)
	cl := &call{typ: cmdBlockStatus, off: off, length: length, status: map[uint32][]StatusExtent{}}
	if err := c.do(cl, 0, nil); err != nil {
		return nil, fmt.Errorf("NBD block status %s at %d: %w", context, off, err)
	}
	var out []StatusExtent
	for _, e := range cl.status[id] {
		if e.Offset >= off+length {
			break
		}
		if e.End() > off+length {
			e.Length = off + length - e.Offset
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("NBD block status %s at %d: %w", context, off, errProtocol("no extent in the reply"))
	}
	return out, nil
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	for pos := 0; pos < len(p); pos += c.maxChunk {
		n := min(c.maxChunk, len(p)-pos)
		cl := &call{typ: cmdWrite, off: off + int64(pos), length: int64(n)}
		if err := c.do(cl, 0, p[pos:pos+n]); err != nil {
			return pos, fmt.Errorf("NBD write at %d: %w", off+int64(pos), err)
		}
	}
	return len(p), nil
}

// Flush asks the server to make writes durable.
func (c *Client) Flush() error { return c.do(&call{typ: cmdFlush}, 0, nil) }

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
