package remote

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"csbs/blockstore"
)

// Options configure a Client.
type Options struct {
	// Rate limits the bytes received from the remote per second, over
	// all connections of the client; 0 = unlimited.
	Rate int64
	// Conns is how many connections (requests in flight) the client
	// keeps; default 4.
	Conns int
	// DialTimeout bounds connecting and the TLS handshake; default 10s.
	DialTimeout time.Duration
	// IdleTimeout fails a request whose connection receives nothing for
	// this long; default 2m.
	IdleTimeout time.Duration
}

// Client talks to a source appliance's replication API over TLS. The
// remote's certificate is trusted only if the SHA-256 of its DER bytes is
// the pinned fingerprint; no CA, host name or expiry is consulted, which
// is what a pin means (the fingerprint is exchanged out of band, like an
// SSH host key). It is safe for concurrent use.
type Client struct {
	url    string
	pin    Fingerprint
	token  string
	http   *http.Client
	tr     *http.Transport
	lim    *rate.Limiter
	chunk  int
	idle   time.Duration
	wire   atomic.Int64
	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a client for the appliance at baseURL (https://HOST:PORT).
func New(baseURL string, pin Fingerprint, token string, opt Options) *Client {
	if opt.Conns <= 0 {
		opt.Conns = 4
	}
	if opt.DialTimeout <= 0 {
		opt.DialTimeout = 10 * time.Second
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 2 * time.Minute
	}
	c := &Client{url: baseURL, pin: pin, token: token, chunk: 64 << 10, idle: opt.IdleTimeout}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if opt.Rate > 0 {
		// Reads are cut to chunk bytes, each paid for after it arrives.
		// The bucket holds an eighth of a second: a stall of the remote
		// (a pack read, a busy CPU) shorter than that is made up for
		// afterwards instead of lowering the average, and over any span
		// the bytes received stay within that much of rate × time.
		c.chunk = int(min(int64(c.chunk), max(opt.Rate/20, 4<<10)))
		c.lim = rate.NewLimiter(rate.Limit(opt.Rate), int(max(int64(c.chunk), opt.Rate/8)))
	}
	host := ""
	if u, err := url.Parse(baseURL); err == nil {
		host = u.Hostname()
	}
	cfg := &tls.Config{
		// The chain is not verified against CAs; VerifyConnection
		// checks the pin instead, for full and resumed handshakes.
		InsecureSkipVerify: true,
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &FingerprintError{URL: baseURL, Want: pin}
			}
			got := CertFingerprint(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(got[:], pin[:]) != 1 {
				return &FingerprintError{URL: baseURL, Got: got, Want: pin}
			}
			return nil
		},
	}
	dialer := &net.Dialer{Timeout: opt.DialTimeout, KeepAlive: 30 * time.Second}
	if opt.Rate > 0 {
		// Pacing reads alone would let the kernel's receive buffers
		// (autotuned to megabytes) take a burst at full speed first; a
		// fixed buffer of half a second's worth over all connections
		// bounds the burst on the wire to that, and still fills a link
		// with up to 500 ms round trips.
		rcvbuf := int(min(max(opt.Rate/int64(opt.Conns)/2, 64<<10), 4<<20))
		dialer.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	c.tr = &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &UnreachableError{URL: baseURL, Err: err}
			}
			tc := tls.Client(&meteredConn{Conn: raw, c: c}, cfg)
			hctx, cancel := context.WithTimeout(ctx, opt.DialTimeout)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				raw.Close()
				var fe *FingerprintError
				if errors.As(err, &fe) {
					return nil, fe
				}
				return nil, &UnreachableError{URL: baseURL, Err: fmt.Errorf("TLS handshake: %w", err)}
			}
			return tc, nil
		},
		MaxIdleConnsPerHost:   opt.Conns,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: opt.IdleTimeout,
	}
	c.http = &http.Client{Transport: c.tr}
	return c
}

// Close drops the client's connections.
func (c *Client) Close() {
	c.cancel()
	c.tr.CloseIdleConnections()
}

// WireBytes is how many bytes the client's connections sent and
// received so far (TLS records, HTTP headers and bodies).
func (c *Client) WireBytes() int64 { return c.wire.Load() }

// meteredConn counts the bytes of a connection and paces its reads.
type meteredConn struct {
	net.Conn
	c *Client
}

func (m *meteredConn) Read(p []byte) (int, error) {
	if m.c.lim != nil && len(p) > m.c.chunk {
		p = p[:m.c.chunk]
	}
	_ = m.Conn.SetReadDeadline(time.Now().Add(m.c.idle))
	n, err := m.Conn.Read(p)
	m.c.wire.Add(int64(n))
	if m.c.lim != nil && n > 0 {
		if werr := m.c.lim.WaitN(m.c.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (m *meteredConn) Write(p []byte) (int, error) {
	n, err := m.Conn.Write(p)
	m.c.wire.Add(int64(n))
	return n, err
}

// FingerprintError means the remote's certificate is not the pinned one.
type FingerprintError struct {
	URL       string
	Got, Want Fingerprint
}

func (e *FingerprintError) Error() string {
	if e.Got == (Fingerprint{}) {
		return fmt.Sprintf("%s presented no certificate; the pinned fingerprint is %s", e.URL, e.Want)
	}
	return fmt.Sprintf("the certificate of %s has SHA-256 fingerprint %s, not the pinned %s: the address reaches another server, or the remote's certificate changed (check it with openssl x509 -noout -fingerprint -sha256 -in its api.tls_cert)", e.URL, e.Got, e.Want)
}

// UnreachableError means the remote could not be connected to.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string { return fmt.Sprintf("cannot reach %s: %v", e.URL, e.Err) }

func (e *UnreachableError) Unwrap() error { return e.Err }

// APIError is an error answer of the remote's API.
type APIError struct {
	URL     string
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	switch e.Status {
	case http.StatusUnauthorized:
		return fmt.Sprintf("%s refused the token (%s): create a replication token on the remote (csbs token create --project P --replication) and add the remote again", e.URL, e.Message)
	case http.StatusForbidden:
		return fmt.Sprintf("%s refused the request: %s", e.URL, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.URL, e.Message)
}

// NotFound reports whether the remote answered 404.
func (e *APIError) NotFound() bool { return e.Status == http.StatusNotFound }

// Transient reports whether err may go away when the request is tried
// again: the remote could not be reached, a connection broke, or the
// remote failed inside. A refused token, a wrong certificate, a missing
// backup or damaged data are permanent.
func Transient(err error) bool {
	var fe *FingerprintError
	var ae *APIError
	var be *RemoteBlockError
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &fe), errors.Is(err, ErrBadStream), errors.Is(err, ErrBaseMismatch):
		return false
	case errors.As(err, &ae):
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	case errors.As(err, &be):
		return !be.Damaged
	}
	var ue *UnreachableError
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// request sends a request and returns the response for a 2xx answer.
func (c *Client) request(ctx context.Context, method, path string, body []byte, ctype string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var fe *FingerprintError
		var ue *UnreachableError
		switch {
		case errors.As(err, &fe):
			return nil, fe
		case errors.As(err, &ue):
			return nil, ue
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%s %s%s: %w", method, c.url, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		ae := &APIError{URL: c.url, Status: resp.StatusCode, Code: "http", Message: resp.Status}
		if json.Unmarshal(data, &e) == nil && e.Error != nil {
			ae.Code, ae.Message = e.Error.Code, e.Error.Message
		}
		return nil, ae
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, out any) error {
	resp, err := c.request(ctx, "GET", path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("GET %s%s: decode answer: %w", c.url, path, err)
	}
	return nil
}

// Identity asks the remote what it is and what the token may read.
func (c *Client) Identity(ctx context.Context) (Identity, error) {
	var id Identity
	return id, c.getJSON(ctx, "/v1/replication/identity", &id)
}

// Backups lists the backups of the token's project on the remote,
// newest first; server ("" = all) narrows them to one server's.
func (c *Client) Backups(ctx context.Context, server string) ([]BackupInfo, error) {
	path := "/v1/replication/backups"
	if server != "" {
		path += "?server=" + url.QueryEscape(server)
	}
	var out []BackupInfo
	if err := c.getJSON(ctx, path, &out); err != nil {
		return nil, err
	}
	now := time.Now()
	for _, b := range out {
		if err := b.Check(now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Backup returns one backup of the remote by id or name.
func (c *Client) Backup(ctx context.Context, ref string) (BackupInfo, error) {
	var out BackupInfo
	if err := c.getJSON(ctx, "/v1/replication/backups/"+url.PathEscape(ref), &out); err != nil {
		return BackupInfo{}, err
	}
	return out, out.Check(time.Now())
}

// Map streams the block map of one disk of a backup (see ReadMap for
// base and fn). baseID names a backup of the same remote whose map the
// caller holds a copy of ("" = none): segments equal to it are then not
// sent again.
func (c *Client) Map(ctx context.Context, backupID, disk, baseID string, base func(seg int64, n int) ([]blockstore.Hash, error), fn func(h MapHeader, seg int64, hs []blockstore.Hash) error) (MapHeader, error) {
	path := "/v1/replication/backups/" + url.PathEscape(backupID) + "/disks/" + url.PathEscape(disk) + "/map"
	if baseID != "" {
		path += "?base=" + url.QueryEscape(baseID)
	}
	resp, err := c.request(ctx, "GET", path, nil, "")
	if err != nil {
		return MapHeader{}, err
	}
	defer resp.Body.Close()
	if baseID == "" {
		base = nil // a stream that claims a base anyway is refused
	}
	return ReadMap(resp.Body, base, fn)
}

// Blocks fetches a batch of blocks (at most MaxBatch) of one backup and
// calls fn with each stored value in the order of refs, as it arrives.
func (c *Client) Blocks(ctx context.Context, backupID string, refs []BlockRef, maxValue int, fn func(i int, value []byte) error) error {
	path := "/v1/replication/backups/" + url.PathEscape(backupID) + "/blocks"
	resp, err := c.request(ctx, "POST", path, EncodeBlockRequest(refs), "application/octet-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return ReadBlocks(resp.Body, refs, maxValue, fn)
}
