package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// Client calls the daemon's API over its unix socket (or a base URL).
type Client struct {
	HTTP    *http.Client
	Base    string // "http://csbs" for a unix socket
	Token   string
	Project string // sent as X-Csbs-Project when set
	Region  string // sent as X-Csbs-Region when set
	Socket  string // for messages
}

// NewUnixClient returns a client for the daemon listening on socket.
func NewUnixClient(socket, token string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{HTTP: &http.Client{Transport: tr}, Base: "http://csbs", Token: token, Socket: socket}
}

// ErrNoDaemon means no daemon answers on the socket: none was started,
// or it stopped (also while a request was on its way).
var ErrNoDaemon = errors.New("no csbs daemon answers")

// connError says what a failed connection means to a user: no daemon
// listens, or the daemon went away during the request.
func (c *Client) connError(ctx context.Context, method, path string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", method, path, context.Cause(ctx))
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w at %s: is `csbs serve` running? (%s %s)", ErrNoDaemon, c.Socket, method, path)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w at %s: the daemon closed the connection during %s %s (did it stop? see its log)", ErrNoDaemon, c.Socket, method, path)
	}
	return fmt.Errorf("%s %s: %w", method, path, err)
}

// Do sends a request with an optional JSON body and decodes the JSON
// answer into out (if not nil). An API error comes back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	_, err := c.do(ctx, method, path, query, in, out)
	return err
}

// List gets a page of a listing (query may carry limit and after) into
// out and returns the cursor of the next page, "" after the last.
func (c *Client) List(ctx context.Context, path string, query url.Values, out any) (string, error) {
	h, err := c.do(ctx, http.MethodGet, path, query, nil, out)
	if err != nil {
		return "", err
	}
	return h.Get(HeaderNext), nil
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	u := c.Base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Project != "" {
		req.Header.Set(HeaderProject, c.Project)
	}
	if c.Region != "" {
		req.Header.Set(HeaderRegion, c.Region)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, c.connError(ctx, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, c.connError(ctx, method, path, fmt.Errorf("read answer: %w", err))
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error *Error `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != nil {
			e.Error.Status = resp.StatusCode
			return nil, e.Error
		}
		return nil, &Error{Status: resp.StatusCode, Code: "http", Message: fmt.Sprintf("%s %s: %s", method, path, resp.Status)}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.Header, nil
}
