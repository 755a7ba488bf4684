// Package s3fault injects faults in front of an S3 server for tests:
// error answers (5xx, 403, ...), delays, answers lost after the server
// acted, and bodies cut off mid-way. It wraps an http.Handler: an
// in-process fake S3, or a reverse proxy to a real gateway.
package s3fault

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rule is one fault. A request matches when Method (empty: any) and
// KeyContains (empty: any) match; the first matching rule with hits left
// applies.
type Rule struct {
	Method      string
	KeyContains string
	Times       int // requests it applies to; 0 = every one
	// Status, when set, answers with this status and an S3 error body
	// with Code instead of passing the request on.
	Status int
	Code   string
	// Delay holds the request this long before anything else.
	Delay time.Duration
	// Lose passes the request on (the server acts) and then answers
	// Status (default 500): the answer is lost.
	Lose bool
	// Cut passes the request on and sends the server's headers and half
	// of its body, then drops the connection.
	Cut bool

	used int
}

// Handler applies rules in front of Next and counts requests.
type Handler struct {
	Next http.Handler

	mu       sync.Mutex
	rules    []*Rule
	requests map[string]int

	inFlight, maxInFlight atomic.Int64
}

// New wraps next.
func New(next http.Handler) *Handler {
	return &Handler{Next: next, requests: map[string]int{}}
}

// NewProxy returns a handler that forwards to the server at target (a
// real gateway), for NewServer or http.Serve.
func NewProxy(target string) (*Handler, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("proxy target %q: %w", target, err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // a dead backend is what the tests want
	return New(rp), nil
}

// Add appends rules.
func (h *Handler) Add(rules ...Rule) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range rules {
		r := rules[i]
		h.rules = append(h.rules, &r)
	}
}

// Clear removes every rule.
func (h *Handler) Clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = nil
}

// Requests returns how many requests of a method arrived ("" = all).
func (h *Handler) Requests(method string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if method == "" {
		n := 0
		for _, c := range h.requests {
			n += c
		}
		return n
	}
	return h.requests[method]
}

// MaxInFlight returns the most requests that were in progress at once.
func (h *Handler) MaxInFlight() int64 { return h.maxInFlight.Load() }

// ResetCounts zeroes the request counts and the in-flight peak.
func (h *Handler) ResetCounts() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests = map[string]int{}
	h.maxInFlight.Store(0)
}

func (h *Handler) match(r *http.Request) *Rule {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests[r.Method]++
	for _, rule := range h.rules {
		if rule.Method != "" && rule.Method != r.Method {
			continue
		}
		if rule.KeyContains != "" && !strings.Contains(r.URL.Path, rule.KeyContains) {
			continue
		}
		if rule.Times > 0 && rule.used >= rule.Times {
			continue
		}
		rule.used++
		c := *rule
		return &c
	}
	return nil
}

// ServeHTTP applies the first matching rule.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.inFlight.Add(1)
	defer h.inFlight.Add(-1)
	for {
		m := h.maxInFlight.Load()
		if n <= m || h.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	rule := h.match(r)
	if rule == nil {
		h.Next.ServeHTTP(w, r)
		return
	}
	if rule.Delay > 0 {
		select {
		case <-time.After(rule.Delay):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case rule.Lose:
		rec := httptest.NewRecorder()
		h.Next.ServeHTTP(rec, r)
		writeError(w, max(rule.Status, http.StatusInternalServerError), rule.Code)
	case rule.Cut:
		rec := httptest.NewRecorder()
		h.Next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, vs := range rec.Header() {
			w.Header()[k] = vs
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // drop the connection mid-body
	case rule.Status != 0:
		// Drain the request body so the client sees the answer, not a
		// reset connection.
		buf := make([]byte, 32<<10)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
		}
		writeError(w, rule.Status, rule.Code)
	default:
		h.Next.ServeHTTP(w, r)
	}
}

func writeError(w http.ResponseWriter, status int, code string) {
	if code == "" {
		code = strings.ReplaceAll(http.StatusText(status), " ", "")
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected %d</Message><RequestId>fault</RequestId></Error>`, code, status)
}
