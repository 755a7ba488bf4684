package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"

	"csbs/blockstore"
	"csbs/internal/extent"
)

// Device is what an export serves: Size bytes readable with ReadAt, which
// must be safe for concurrent use.
type Device interface {
	io.ReaderAt
	Size() int64
}

// WritableDevice is a Device that takes writes. Flush makes every write
// acknowledged so far durable.
type WritableDevice interface {
	Device
	io.WriterAt
	Flush() error
}

// Zeroer writes zeroes efficiently (NBD_CMD_WRITE_ZEROES).
type Zeroer interface {
	WriteZeroes(off, n int64) error
}

// Trimmer discards a range (NBD_CMD_TRIM); afterwards it reads as zeroes
// or as its old content, as the protocol allows. TRIM is advertised only
// for writable devices that implement it.
type Trimmer interface {
	Trim(off, n int64) error
}

// Cacher loads a range ahead of reads (NBD_CMD_CACHE: the client says it
// will read it). CACHE is advertised only for devices that implement it.
type Cacher interface {
	Cache(ctx context.Context, off, n int64) error
}

// ContextReaderAt is a Device whose reads can be canceled: the server
// cancels the reads of a connection that goes away.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// CachedReader is a Device that can answer a read at once when its
// caches hold every byte (no block to load, nothing to wait for); the
// server answers such reads without handing them to a worker.
type CachedReader interface {
	ReadCached(p []byte, off int64) bool
}

// Budget bounds the bytes of request and reply data in flight across all
// connections (the store's budget in the daemon).
type Budget interface {
	Acquire(ctx context.Context, n int64) error
	TryAcquire(n int64) bool
	Release(n int64)
}

// Extenter reports allocation (the base:allocation meta context), which
// lets nbdcopy and qemu-img skip holes.
type Extenter interface {
	Extents(off, n int64) ([]extent.Extent, error)
}

// Export is one named device.
type Export struct {
	Name        string
	Description string
	Device      Device
	ReadOnly    bool
	// PreferredBlock is advertised as the preferred I/O size (the store's
	// block size for backups).
	PreferredBlock uint32
}

// Exports finds exports by name; the daemon's registry implements it.
type Exports interface {
	Lookup(name string) (*Export, bool)
	Names() []string
}

// ErrReadOnly is returned for writes to a read-only export.
var ErrReadOnly = errors.New("export is read-only")

// ExportServer serves NBD exports (fixed newstyle negotiation) on any
// listener. See the package documentation for what comes from go-nbd and
// what is ours.
type ExportServer struct {
	Exports Exports
	Log     *slog.Logger
	// AllowList permits NBD_OPT_LIST (export names are not secret on a
	// private unix socket; on TCP they are).
	AllowList bool
	// MaxConnsPerExport bounds concurrent connections to one export.
	MaxConnsPerExport int
	// Memory, if set, bounds the read and write buffers of requests in
	// flight: a request waits for its bytes before it is served.
	Memory Budget
	// MaxConnMemory, if set with Memory, is the most of it one
	// connection may hold (a request larger than that still runs when
	// its connection holds nothing else). A client that stops reading
	// its replies keeps their buffers until the reply timeout; without a
	// share per connection it could hold the whole budget meanwhile and
	// stall every other reader of the store. (It bounds a connection,
	// not a client: a client with several connections holds several.)
	MaxConnMemory int64
	// PayloadTimeout bounds how long a write's payload may take to arrive
	// after its header (the payload's budget is held meanwhile, so a
	// client that sends a header and stalls would starve the others); a
	// connection that exceeds it is closed. 0: 10 s plus 1 s per MiB.
	PayloadTimeout time.Duration

	bufs bufPool

	reads, readBytes, readErrors atomic.Int64
	writtenBytes, writeErrors    atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]string // open connections and their export
	per   map[string]int
	wg    sync.WaitGroup
}

// Serve accepts connections until ctx ends or l fails.
func (s *ExportServer) Serve(ctx context.Context, l net.Listener) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.closeAll()
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("nbd accept: %w", err)
		}
		s.track(c, "")
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(ctx, c)
		}()
	}
}

func (s *ExportServer) track(c net.Conn, export string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns, s.per = map[net.Conn]string{}, map[string]int{}
	}
	if old := s.conns[c]; old != "" {
		s.per[old]--
	}
	s.conns[c] = export
	if export != "" {
		s.per[export]++
	}
}

func (s *ExportServer) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.conns[c]; e != "" {
		s.per[e]--
	}
	delete(s.conns, c)
	c.Close()
}

func (s *ExportServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Disconnect closes every connection to an export (on detach).
func (s *ExportServer) Disconnect(export string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, e := range s.conns {
		if e == export {
			c.Close()
		}
	}
}

// Stats are the server's counters since it was made.
type Stats struct {
	Reads, ReadBytes, ReadErrors int64
	WrittenBytes, WriteErrors    int64
}

// Stats returns the counters.
func (s *ExportServer) Stats() Stats {
	return Stats{
		Reads: s.reads.Load(), ReadBytes: s.readBytes.Load(), ReadErrors: s.readErrors.Load(),
		WrittenBytes: s.writtenBytes.Load(), WriteErrors: s.writeErrors.Load(),
	}
}

// Connections returns the number of open connections per export.
func (s *ExportServer) Connections() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for e, n := range s.per {
		if n > 0 {
			out[e] = n
		}
	}
	return out
}

type conn struct {
	net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func (s *ExportServer) serveConn(ctx context.Context, nc net.Conn) {
	c := &conn{Conn: nc, r: bufio.NewReaderSize(nc, 128<<10), w: bufio.NewWriterSize(nc, 128<<10)}
	// A client gets 30 s to negotiate: a silent peer does not pin a goroutine.
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	exp, st, err := s.negotiate(c)
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, errAborted) {
			s.Log.Debug("nbd negotiation", "remote", nc.RemoteAddr(), "err", err)
		}
		return
	}
	nc.SetDeadline(time.Time{})
	s.track(nc, exp.Name)
	if s.MaxConnsPerExport > 0 {
		s.mu.Lock()
		n := s.per[exp.Name]
		s.mu.Unlock()
		if n > s.MaxConnsPerExport {
			s.Log.Warn("nbd: too many connections to export", "export", exp.Name, "limit", s.MaxConnsPerExport)
			return
		}
	}
	s.transmit(ctx, c, exp, st)
}

var errAborted = errors.New("client aborted negotiation")

// session is what negotiation agreed.
type session struct {
	structured bool
	baseAlloc  bool
}

func (s *ExportServer) negotiate(c *conn) (*Export, session, error) {
	var st session
	be := binary.BigEndian
	hdr := make([]byte, 18)
	be.PutUint64(hdr, magicNBD)
	be.PutUint64(hdr[8:], magicOption)
	be.PutUint16(hdr[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.w.Write(hdr); err != nil {
		return nil, st, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, st, err
	}
	var cflags uint32
	if err := binary.Read(c.r, be, &cflags); err != nil {
		return nil, st, err
	}
	if cflags&^(clientFixed|clientNoZeroes) != 0 {
		return nil, st, fmt.Errorf("unknown client flags %#x", cflags)
	}
	noZeroes := cflags&clientNoZeroes != 0
	for {
		if err := c.w.Flush(); err != nil {
			return nil, st, err
		}
		var oh struct {
			Magic  uint64
			Option uint32
			Length uint32
		}
		if err := binary.Read(c.r, be, &oh); err != nil {
			return nil, st, err
		}
		if oh.Magic != magicOption {
			return nil, st, fmt.Errorf("bad option magic %#x", oh.Magic)
		}
		if oh.Length > maxOptionLength {
			// Too big to read: answer, then drop the client (we cannot skip
			// that much data safely).
			s.optReply(c, oh.Option, repErrTooBig, []byte("option too large"))
			c.w.Flush()
			return nil, st, fmt.Errorf("option %d of %d bytes", oh.Option, oh.Length)
		}
		data := make([]byte, oh.Length)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return nil, st, err
		}
		switch oh.Option {
		case optExportName:
			exp, ok := s.Exports.Lookup(string(data))
			if !ok {
				return nil, st, fmt.Errorf("unknown export %q (NBD_OPT_EXPORT_NAME cannot report errors)", data)
			}
			b := make([]byte, 10, 134)
			be.PutUint64(b, uint64(exp.Device.Size()))
			be.PutUint16(b[8:], transmissionFlags(exp, st))
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			if _, err := c.w.Write(b); err != nil {
				return nil, st, err
			}
			return exp, st, c.w.Flush()
		case optAbort:
			s.optReply(c, oh.Option, repAck, nil)
			c.w.Flush()
			return nil, st, errAborted
		case optList:
			if len(data) != 0 {
				s.optReply(c, oh.Option, repErrInvalid, []byte("LIST takes no data"))
				continue
			}
			if !s.AllowList {
				s.optReply(c, oh.Option, repErrPolicy, []byte("listing exports is not allowed here; ask the appliance (csbs export ls)"))
				continue
			}
			for _, n := range s.Exports.Names() {
				b := make([]byte, 4+len(n))
				be.PutUint32(b, uint32(len(n)))
				copy(b[4:], n)
				s.optReply(c, oh.Option, repServer, b)
			}
			s.optReply(c, oh.Option, repAck, nil)
		case optStructured:
			if len(data) != 0 {
				s.optReply(c, oh.Option, repErrInvalid, []byte("STRUCTURED_REPLY takes no data"))
				continue
			}
			st.structured = true
			s.optReply(c, oh.Option, repAck, nil)
		case optListMetaCtx, optSetMetaCtx:
			s.metaContext(c, oh.Option, data, &st)
		case optInfo, optGo:
			exp, err := s.infoGo(c, oh.Option, data, st)
			if err != nil {
				return nil, st, err
			}
			if exp != nil && oh.Option == optGo {
				return exp, st, nil
			}
		case optStartTLS:
			s.optReply(c, oh.Option, repErrPolicy, []byte("TLS is not offered on this listener"))
		default:
			s.optReply(c, oh.Option, repErrUnsup, []byte("unsupported option"))
		}
	}
}

func (s *ExportServer) optReply(c *conn, opt, typ uint32, data []byte) {
	b := make([]byte, 20+len(data))
	be := binary.BigEndian
	be.PutUint64(b, magicRepOpt)
	be.PutUint32(b[8:], opt)
	be.PutUint32(b[12:], typ)
	be.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	c.w.Write(b)
}

// parseNameAndRest reads "u32 length, name" from the front of data.
func parseName(data []byte) (string, []byte, bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-4) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

func (s *ExportServer) infoGo(c *conn, opt uint32, data []byte, st session) (*Export, error) {
	be := binary.BigEndian
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 {
		s.optReply(c, opt, repErrInvalid, []byte("malformed INFO/GO request"))
		return nil, c.w.Flush()
	}
	nreq := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		s.optReply(c, opt, repErrInvalid, []byte("malformed information request list"))
		return nil, c.w.Flush()
	}
	exp, found := s.Exports.Lookup(name)
	if !found {
		s.optReply(c, opt, repErrUnknown, []byte("no export named "+name))
		return nil, c.w.Flush()
	}
	info := make([]byte, 12)
	be.PutUint16(info, infoExport)
	be.PutUint64(info[2:], uint64(exp.Device.Size()))
	be.PutUint16(info[10:], transmissionFlags(exp, st))
	s.optReply(c, opt, repInfo, info)
	for i := 0; i < nreq; i++ {
		switch be.Uint16(rest[2*i:]) {
		case infoName:
			b := make([]byte, 2+len(exp.Name))
			be.PutUint16(b, infoName)
			copy(b[2:], exp.Name)
			s.optReply(c, opt, repInfo, b)
		case infoDescription:
			b := make([]byte, 2+len(exp.Description))
			be.PutUint16(b, infoDescription)
			copy(b[2:], exp.Description)
			s.optReply(c, opt, repInfo, b)
		case infoBlockSize:
			b := make([]byte, 14)
			be.PutUint16(b, infoBlockSize)
			be.PutUint32(b[2:], defaultMinBlock)
			pref := exp.PreferredBlock
			if pref == 0 {
				pref = defaultPrefBlock
			}
			be.PutUint32(b[6:], pref)
			be.PutUint32(b[10:], defaultMaxPayload)
			s.optReply(c, opt, repInfo, b)
		}
	}
	s.optReply(c, opt, repAck, nil)
	return exp, c.w.Flush()
}

func (s *ExportServer) metaContext(c *conn, opt uint32, data []byte, st *session) {
	be := binary.BigEndian
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		s.optReply(c, opt, repErrInvalid, []byte("malformed meta context request"))
		return
	}
	if opt == optSetMetaCtx && !st.structured {
		s.optReply(c, opt, repErrInvalid, []byte("negotiate structured replies first"))
		return
	}
	if _, found := s.Exports.Lookup(name); !found {
		s.optReply(c, opt, repErrUnknown, []byte("no export named "+name))
		return
	}
	n := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < n; i++ {
		q, r, ok := parseName(rest)
		if !ok {
			s.optReply(c, opt, repErrInvalid, []byte("malformed meta context query"))
			return
		}
		queries = append(queries, q)
		rest = r
	}
	if opt == optSetMetaCtx {
		st.baseAlloc = false
	}
	wantAlloc := n == 0 && opt == optListMetaCtx
	for _, q := range queries {
		if q == metaBaseAlloc || (opt == optListMetaCtx && q == "base:") {
			wantAlloc = true
		}
	}
	if wantAlloc {
		b := make([]byte, 4+len(metaBaseAlloc))
		be.PutUint32(b, metaBaseAllocID)
		copy(b[4:], metaBaseAlloc)
		s.optReply(c, opt, repMetaContext, b)
		if opt == optSetMetaCtx {
			st.baseAlloc = true
		}
	}
	s.optReply(c, opt, repAck, nil)
}

func transmissionFlags(e *Export, st session) uint16 {
	f := tflagHasFlags | tflagFlush | tflagFUA | tflagMultiConn
	if _, ok := e.Device.(Cacher); ok {
		f |= tflagCache
	}
	if st.structured {
		f |= tflagDF
	}
	if e.ReadOnly {
		return f | tflagReadOnly
	}
	if _, ok := e.Device.(Trimmer); ok {
		f |= tflagTrim
	}
	return f | tflagZeroes
}

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
	data   []byte // write payload, from the pool
	budget int64  // bytes taken from ExportServer.Memory for it
	share  *connShare
}

// connShare is the part of ExportServer.Memory one connection holds,
// bounded by ExportServer.MaxConnMemory. It serves in order, like the
// budget: a read the reader could answer from the caches does not pass a
// request waiting for the share (else a client streaming cached reads
// kept a large read waiting as long as the stream lasted).
type connShare struct {
	max int64
	sem *semaphore.Weighted
}

func newConnShare(max int64) *connShare {
	if max <= 0 {
		return nil
	}
	return &connShare{max: max, sem: semaphore.NewWeighted(max)}
}

// clamp: a request larger than the share takes all of it, so it runs
// when the connection holds nothing else. Give the same n to release.
func (c *connShare) clamp(n int64) int64 { return min(n, c.max) }

// tryAcquire takes n bytes if the connection may hold them now and no
// request waits for the share. A nil share (no limit) always may.
func (c *connShare) tryAcquire(n int64) bool {
	return c == nil || c.sem.TryAcquire(c.clamp(n))
}

// acquire waits until the connection may hold n more bytes.
func (c *connShare) acquire(ctx context.Context, n int64) error {
	if c == nil {
		return nil
	}
	return c.sem.Acquire(ctx, c.clamp(n))
}

func (c *connShare) release(n int64) {
	if c != nil {
		c.sem.Release(c.clamp(n))
	}
}

// replyTimeout is how long a reply may wait for the client to read it.
const replyTimeout = 2 * time.Minute

func (s *ExportServer) transmit(ctx context.Context, c *conn, exp *Export, st session) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		jobs    = make(chan *request, maxInFlight)
		slots   = make(chan struct{}, maxInFlight) // requests handed to workers and not finished
		workers int
		hdr     = make([]byte, 28)
		be      = binary.BigEndian
		rw      = &replyWriter{conn: c.Conn, timeout: replyTimeout}
		cached  CachedReader
		share   *connShare
	)
	if s.Memory != nil {
		share = newConnShare(s.MaxConnMemory)
	}
	if cr, ok := exp.Device.(CachedReader); ok {
		cached = cr
	}
	// finish ends the connection's requests: after NBD_CMD_DISC the ones
	// in flight complete and are answered; when the connection broke they
	// see their context end. Replies still queued go out if they can,
	// and their buffers and budget come back in every case.
	finished := false
	finish := func(graceful bool) {
		if finished {
			return
		}
		finished = true
		if !graceful {
			cancel()
		}
		close(jobs)
		// Replies this goroutine queued hold budget a worker may be
		// waiting for: they go out before waiting for the workers.
		rw.kick()
		wg.Wait()
		rw.kick()
		rw.abandon()
		cancel()
	}
	defer finish(false)
	// Workers live as long as the connection: a request does not pay
	// for a new goroutine and its stack growth.
	dispatch := func(r *request) {
		select {
		case slots <- struct{}{}:
		default:
			rw.kick() // about to wait for a worker: answered replies go first
			slots <- struct{}{}
		}
		// A worker per request handed over and not finished (slots,
		// this one included): fewer would leave this one waiting behind
		// another. An idle count cannot tell: a worker waiting in jobs is
		// handed a request directly and still looks idle until it runs,
		// so a burst went to one worker, one request after another.
		if workers < len(slots) {
			workers++
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range jobs {
					s.serve(ctx, rw, exp, st, r)
					<-slots
				}
			}()
		}
		jobs <- r
	}
	for ctx.Err() == nil {
		// Before the reader blocks for more requests, the replies it
		// answered itself go out, together.
		if c.r.Buffered() < len(hdr) {
			rw.kick()
		}
		if _, err := io.ReadFull(c.r, hdr); err != nil {
			return
		}
		if be.Uint32(hdr) != magicRequest {
			s.Log.Warn("nbd: bad request magic; closing", "export", exp.Name, "magic", be.Uint32(hdr))
			return
		}
		r := &request{flags: be.Uint16(hdr[4:]), typ: be.Uint16(hdr[6:]), cookie: be.Uint64(hdr[8:]), off: be.Uint64(hdr[16:]), length: be.Uint32(hdr[24:]), share: share}
		switch r.typ {
		case cmdDisc:
			finish(true)
			return
		case cmdWrite:
			if r.length > maxPayload {
				// The payload cannot be skipped safely: refuse and close.
				s.reply(rw, st, r, errOverflow, nil, "write larger than 32 MiB", nil)
				return
			}
			rw.kick() // the budget may wait for replies this goroutine queued
			if err := s.take(ctx, r, int64(r.length)); err != nil {
				return
			}
			r.data = s.bufs.get(int(r.length))
			if c.r.Buffered() < int(r.length) {
				rw.kick()
				c.SetReadDeadline(time.Now().Add(s.payloadTimeout(r.length)))
			}
			_, err := io.ReadFull(c.r, r.data)
			c.SetReadDeadline(time.Time{})
			if err != nil {
				s.done(r, r.data)
				return
			}
		case cmdRead:
			// A read the caches can answer at once (no block to load) is
			// answered here, like a pread in qemu-nbd: no hand-off, and
			// its reply waits for the others read in the same batch.
			if cached != nil && s.readCached(rw, cached, exp, st, r) {
				if rw.queuedBytes() >= maxQueued {
					rw.kick()
				}
				continue
			}
		}
		dispatch(r)
	}
}

// readCached answers r from the device's caches if it can without
// waiting for anything, and reports whether it did.
func (s *ExportServer) readCached(rw *replyWriter, dev CachedReader, exp *Export, st session, r *request) bool {
	size := uint64(exp.Device.Size())
	if r.length == 0 || r.length > maxCachedRead || r.off > size || uint64(r.length) > size-r.off {
		return false
	}
	if s.Memory != nil {
		n := int64(r.length)
		if !r.share.tryAcquire(n) {
			return false
		}
		if !s.Memory.TryAcquire(n) {
			r.share.release(n)
			return false
		}
		r.budget = n
	}
	buf := s.bufs.get(int(r.length))
	if !dev.ReadCached(buf, int64(r.off)) {
		s.done(r, buf)
		return false
	}
	s.reads.Add(1)
	s.readBytes.Add(int64(len(buf)))
	s.queueReply(rw, st, r, 0, buf, "", func() { s.done(r, buf) })
	return true
}

// maxQueued is how many reply bytes the request reader lets pile up
// before it sends them, while more requests are buffered.
const maxQueued = 1 << 20

// maxCachedRead is the largest read the request reader answers itself
// from the caches; larger ones go to a worker so that reading requests
// never stalls behind a big copy.
const maxCachedRead = 256 << 10

// take reserves n bytes of the memory budget for r.
func (s *ExportServer) take(ctx context.Context, r *request, n int64) error {
	if s.Memory == nil || n == 0 {
		return nil
	}
	if err := r.share.acquire(ctx, n); err != nil {
		return err
	}
	if err := s.Memory.Acquire(ctx, n); err != nil {
		r.share.release(n)
		return err
	}
	r.budget += n
	return nil
}

// done returns r's buffers and budget once its reply is written.
func (s *ExportServer) done(r *request, bufs ...[]byte) {
	for _, b := range bufs {
		if b != nil {
			s.bufs.put(b)
		}
	}
	if r.budget > 0 {
		s.Memory.Release(r.budget)
		r.share.release(r.budget)
		r.budget = 0
	}
}

// serve executes one request and replies.
func (s *ExportServer) serve(ctx context.Context, rw *replyWriter, exp *Export, st session, r *request) {
	var buf []byte
	if r.typ == cmdRead && r.length <= maxPayload {
		if err := s.take(ctx, r, int64(r.length)); err != nil {
			s.reply(rw, st, r, errShutdown, nil, "connection closing", func() { s.done(r, r.data) })
			return
		}
		buf = s.bufs.get(int(r.length))
	}
	errno, data, msg := s.execute(ctx, exp, st, r, buf)
	if errno != 0 && buf != nil {
		s.bufs.put(buf)
		buf = nil
	}
	s.reply(rw, st, r, errno, data, msg, func() { s.done(r, buf, r.data) })
}

// execute runs one request and returns the NBD error (0 for success),
// the read data or block status payload, and a message for errors. buf
// is the buffer for a read's data.
func (s *ExportServer) execute(ctx context.Context, exp *Export, st session, r *request, buf []byte) (uint32, []byte, string) {
	size := uint64(exp.Device.Size())
	inRange := r.off <= size && uint64(r.length) <= size-r.off
	switch r.typ {
	case cmdRead:
		if r.length > maxPayload {
			return errOverflow, nil, "read larger than 32 MiB"
		}
		if !inRange {
			return errInval, nil, "read beyond the end of the export"
		}
		var n int
		var err error
		if cr, ok := exp.Device.(ContextReaderAt); ok {
			n, err = cr.ReadAtContext(ctx, buf, int64(r.off))
		} else {
			n, err = exp.Device.ReadAt(buf, int64(r.off))
		}
		s.reads.Add(1)
		if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
			s.readErrors.Add(1)
			return s.errno(exp, "read", r, err)
		}
		s.readBytes.Add(int64(len(buf)))
		return 0, buf, ""
	case cmdWrite, cmdWriteZeroes, cmdTrim:
		w, writable := exp.Device.(WritableDevice)
		if exp.ReadOnly || !writable {
			return errPerm, nil, "export is read-only"
		}
		if !inRange {
			return errNoSpc, nil, "write beyond the end of the export"
		}
		var err error
		switch r.typ {
		case cmdWrite:
			_, err = w.WriteAt(r.data, int64(r.off))
		case cmdWriteZeroes:
			err = writeZeroes(w, int64(r.off), int64(r.length))
		case cmdTrim:
			t, ok := w.(Trimmer)
			if !ok {
				return errInval, nil, "this export does not take TRIM"
			}
			err = t.Trim(int64(r.off), int64(r.length))
		}
		if err == nil && r.flags&cmdFlagFUA != 0 {
			err = w.Flush()
		}
		if err != nil {
			s.writeErrors.Add(1)
			return s.errno(exp, "write", r, err)
		}
		if r.typ == cmdWrite {
			s.writtenBytes.Add(int64(len(r.data)))
		}
		return 0, nil, ""
	case cmdFlush:
		if w, ok := exp.Device.(WritableDevice); ok && !exp.ReadOnly {
			if err := w.Flush(); err != nil {
				return s.errno(exp, "flush", r, err)
			}
		}
		return 0, nil, ""
	case cmdCache:
		if !inRange {
			return errInval, nil, "cache beyond the end of the export"
		}
		c, ok := exp.Device.(Cacher)
		if !ok {
			return errInval, nil, "this export does not take CACHE"
		}
		if err := c.Cache(ctx, int64(r.off), int64(r.length)); err != nil {
			return s.errno(exp, "cache", r, err)
		}
		return 0, nil, ""
	case cmdBlockStatus:
		if !st.baseAlloc {
			return errInval, nil, "block status needs the base:allocation meta context"
		}
		if !inRange || r.length == 0 {
			return errInval, nil, "block status beyond the end of the export"
		}
		return s.blockStatus(exp, r)
	}
	return errInval, nil, fmt.Sprintf("unknown command %d", r.typ)
}

func writeZeroes(w WritableDevice, off, n int64) error {
	if z, ok := w.(Zeroer); ok {
		return z.WriteZeroes(off, n)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := w.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

func (s *ExportServer) blockStatus(exp *Export, r *request) (uint32, []byte, string) {
	var exts []extent.Extent
	if e, ok := exp.Device.(Extenter); ok {
		var err error
		if exts, err = e.Extents(int64(r.off), int64(r.length)); err != nil {
			return s.errno(exp, "block status", r, err)
		}
	}
	if len(exts) == 0 {
		exts = []extent.Extent{{Length: int64(r.length)}}
	}
	be := binary.BigEndian
	out := make([]byte, 4, 4+8*len(exts))
	be.PutUint32(out, metaBaseAllocID)
	var total int64
	for _, e := range exts {
		if e.Length <= 0 {
			continue
		}
		l := min(e.Length, int64(r.length)-total, 1<<31)
		var flags uint32
		if e.Hole {
			flags |= stateHole
		}
		if e.Zero {
			flags |= stateZero
		}
		out = be.AppendUint32(out, uint32(l))
		out = be.AppendUint32(out, flags)
		total += l
		if total >= int64(r.length) || r.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	return 0, out, ""
}

// errno maps an error to its NBD error code: the one place where that
// happens. Damaged backup data is EIO, never data.
func (s *ExportServer) errno(exp *Export, op string, r *request, err error) (uint32, []byte, string) {
	code := errIO
	switch {
	case blockstore.IsDataError(err):
		code = errIO
	case errors.Is(err, ErrReadOnly):
		code = errPerm
	case errors.Is(err, syscall.ENOSPC):
		code = errNoSpc
	case errors.Is(err, syscall.ENOMEM):
		code = errNoMem
	case errors.Is(err, blockstore.ErrClosed), errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled):
		code = errShutdown
	}
	s.Log.Warn("nbd "+op+" failed", "export", exp.Name, "offset", r.off, "length", r.length, "err", err)
	return code, nil, err.Error()
}

// reply sends one reply: a structured one for reads and block status
// when negotiated, a simple one otherwise. after runs once it is written.
func (s *ExportServer) reply(rw *replyWriter, st session, r *request, errno uint32, data []byte, msg string, after func()) {
	s.queueReply(rw, st, r, errno, data, msg, after)
	rw.kick()
}

// queueReply queues a reply without writing it (see reply).
func (s *ExportServer) queueReply(rw *replyWriter, st session, r *request, errno uint32, data []byte, msg string, after func()) {
	be := binary.BigEndian
	structured := st.structured && (r.typ == cmdRead || r.typ == cmdBlockStatus)
	switch {
	case !structured:
		h := make([]byte, 16)
		be.PutUint32(h, magicSimple)
		be.PutUint32(h[4:], errno)
		be.PutUint64(h[8:], r.cookie)
		if errno == 0 && r.typ == cmdRead {
			rw.add([][]byte{h, data}, after)
			return
		}
		rw.add([][]byte{h}, after)
	case errno != 0:
		if len(msg) > 4096 {
			msg = msg[:4096]
		}
		payload := make([]byte, 6+len(msg))
		be.PutUint32(payload, errno)
		be.PutUint16(payload[4:], uint16(len(msg)))
		copy(payload[6:], msg)
		rw.add([][]byte{chunkHeader(replyFlagDone, chunkError, r.cookie, uint32(len(payload))), payload}, after)
	case r.typ == cmdRead:
		h := chunkHeader(replyFlagDone, chunkOffsetData, r.cookie, uint32(8+len(data)))
		h = be.AppendUint64(h, r.off)
		rw.add([][]byte{h, data}, after)
	default: // block status
		rw.add([][]byte{chunkHeader(replyFlagDone, chunkBlockStatus, r.cookie, uint32(len(data))), data}, after)
	}
}

// chunkHeader is a structured reply chunk's header, with room for the
// 8-byte offset of a data chunk.
func chunkHeader(flags, typ uint16, cookie uint64, length uint32) []byte {
	h := make([]byte, 20, 28)
	be := binary.BigEndian
	be.PutUint32(h, magicStructRep)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], cookie)
	be.PutUint32(h[16:], length)
	return h
}

// payloadTimeout is how long a write payload of n bytes may take to
// arrive (see ExportServer.PayloadTimeout).
func (s *ExportServer) payloadTimeout(n uint32) time.Duration {
	if s.PayloadTimeout > 0 {
		return s.PayloadTimeout
	}
	return 10*time.Second + time.Duration(n>>20)*time.Second
}
