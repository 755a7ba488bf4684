package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Protocol numbers of the NBD handshake and transmission (doc/proto.md
// of the NBD project), for the pipelined random-read client below.
const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic    = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic    = 0x0003e889045565a9
	nbdReqMagic    = 0x25609513
	nbdSimpleReply = 0x67446698
	nbdOptGo       = 7
	nbdRepAck      = 1
	nbdRepInfo     = 3
	nbdCmdRead     = 0
	nbdCmdDisc     = 2
)

// randomPipelined reads 4 KiB at random aligned offsets over one NBD
// connection with depth requests always in flight, for d, and returns
// reads per second. Unlike the appliance's general-purpose client, it
// sends the requests that are due together in one write and reads
// replies in one loop, as fio's nbd engine (libnbd) does, so that the
// figure is the server's, not the client's.
func randomPipelined(uri string, depth int, d time.Duration) (float64, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return 0, err
	}
	conn, err := net.Dial("unix", u.Query().Get("socket"))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 256<<10)
	size, err := handshake(conn, r, strings.TrimPrefix(u.Path, "/"))
	if err != nil {
		return 0, fmt.Errorf("NBD handshake with %s: %w", uri, err)
	}
	be := binary.BigEndian
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	request := func(b []byte, cookie uint64) []byte {
		b = be.AppendUint32(b, nbdReqMagic)
		b = be.AppendUint16(b, 0)
		b = be.AppendUint16(b, nbdCmdRead)
		b = be.AppendUint64(b, cookie)
		b = be.AppendUint64(b, uint64(rng.Int64N(size/4096)*4096))
		return be.AppendUint32(b, 4096)
	}
	// The reader answers each reply by queueing a new request; the
	// writer sends what is queued in one write.
	due := make(chan int, depth)
	var done atomic.Int64
	stop := time.Now().Add(d)
	start := time.Now()
	readErr := make(chan error, 1)
	go func() {
		hdr := make([]byte, 16)
		data := make([]byte, 4096)
		for {
			if _, err := io.ReadFull(r, hdr); err != nil {
				readErr <- err
				return
			}
			if be.Uint32(hdr) != nbdSimpleReply || be.Uint32(hdr[4:]) != 0 {
				readErr <- fmt.Errorf("reply %x error %d", be.Uint32(hdr), be.Uint32(hdr[4:]))
				return
			}
			if _, err := io.ReadFull(r, data); err != nil {
				readErr <- err
				return
			}
			done.Add(1)
			due <- 1
		}
	}()
	for range depth {
		due <- 1
	}
	buf := make([]byte, 0, 28*depth)
	cookie := uint64(0)
	for time.Now().Before(stop) {
		select {
		case <-due:
		case err := <-readErr:
			return 0, err
		}
		buf = buf[:0]
		n := 1
		for more := true; more; {
			select {
			case <-due:
				n++
			default:
				more = false
			}
		}
		for range n {
			cookie++
			buf = request(buf, cookie)
		}
		if _, err := conn.Write(buf); err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(start)
	return float64(done.Load()) / elapsed.Seconds(), nil
}

// handshake negotiates export name with NBD_OPT_GO (fixed newstyle, no
// structured replies) and returns the export's size.
func handshake(conn net.Conn, r *bufio.Reader, name string) (int64, error) {
	be := binary.BigEndian
	hello := make([]byte, 18)
	if _, err := io.ReadFull(r, hello); err != nil {
		return 0, err
	}
	if be.Uint64(hello) != nbdMagic || be.Uint64(hello[8:]) != nbdOptMagic {
		return 0, fmt.Errorf("not an NBD server")
	}
	opt := be.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	opt = be.AppendUint64(opt, nbdOptMagic)
	opt = be.AppendUint32(opt, nbdOptGo)
	opt = be.AppendUint32(opt, uint32(4+len(name)+2))
	opt = be.AppendUint32(opt, uint32(len(name)))
	opt = append(opt, name...)
	opt = be.AppendUint16(opt, 0)
	if _, err := conn.Write(opt); err != nil {
		return 0, err
	}
	var size int64
	for {
		h := make([]byte, 20)
		if _, err := io.ReadFull(r, h); err != nil {
			return 0, err
		}
		if be.Uint64(h) != nbdRepMagic {
			return 0, fmt.Errorf("bad option reply")
		}
		typ, n := be.Uint32(h[12:]), be.Uint32(h[16:])
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return 0, err
		}
		switch {
		case typ == nbdRepAck:
			return size, nil
		case typ == nbdRepInfo && n >= 12 && be.Uint16(data) == 0:
			size = int64(be.Uint64(data[2:]))
		case typ&(1<<31) != 0:
			return 0, fmt.Errorf("export %q refused: %s", name, data)
		}
	}
}
