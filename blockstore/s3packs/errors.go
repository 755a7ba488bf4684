package s3packs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"csbs/blockstore"
)

// Errors that a *RequestError wraps, for callers to branch on with
// errors.Is.
var (
	// ErrAccessDenied: the endpoint refused the credentials (unknown
	// access key, wrong secret, or no permission on the bucket).
	ErrAccessDenied = errors.New("access denied")
	// ErrNoSuchBucket: the bucket does not exist.
	ErrNoSuchBucket = errors.New("no such bucket")
	// ErrExists: a create-only PUT was refused because the object exists.
	ErrExists = errors.New("object already exists (create-only PUT refused)")
	// ErrNotImplemented: the endpoint does not support a request feature
	// (typically If-None-Match on PUT).
	ErrNotImplemented = errors.New("not implemented by the endpoint")
)

// RequestError is a request that failed for good: a permanent answer, or
// a transient one that outlived every retry.
type RequestError struct {
	Op       string // PUT, GET, HEAD, DELETE, LIST
	Endpoint string
	Bucket   string
	Key      string // empty for bucket-wide requests
	Attempts int
	Kind     error // one of the Err* above, blockstore.ErrPackNotFound, or nil
	Err      error // the last failure
	Hint     string
}

func (e *RequestError) Error() string {
	obj := e.Bucket
	if e.Key != "" {
		obj += "/" + e.Key
	}
	msg := fmt.Sprintf("s3 %s %s at %s", e.Op, obj, e.Endpoint)
	if e.Kind != nil {
		msg += ": " + e.Kind.Error()
	}
	if e.Attempts > 1 {
		msg += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	msg += ": " + describe(e.Err)
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

// Unwrap exposes the kind (for errors.Is) and the last failure.
func (e *RequestError) Unwrap() []error {
	if e.Kind != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Err}
}

// describe shortens the SDK's error chain to what a person needs: the
// service's code and message, or the transport failure. Request ids are
// kept out of the way, credentials never appear in either.
func describe(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		msg := ae.ErrorMessage()
		if msg == "" {
			msg = http.StatusText(statusOf(err))
		}
		if code := ae.ErrorCode(); code != "" {
			return fmt.Sprintf("%s: %s (HTTP %d)", code, msg, statusOf(err))
		}
		return msg
	}
	if s := statusOf(err); s != 0 {
		return fmt.Sprintf("HTTP %d %s", s, http.StatusText(s))
	}
	var se *smithy.OperationError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	return err.Error()
}

// statusOf returns the HTTP status of a failed request, 0 when none came.
func statusOf(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		return re.HTTPStatusCode()
	}
	return 0
}

func codeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// classify says what a failed attempt means: its kind (nil when none of
// ours) and whether another attempt may succeed.
func classify(err error) (kind error, retry bool) {
	status, code := statusOf(err), codeOf(err)
	switch {
	case code == "NoSuchBucket":
		return ErrNoSuchBucket, false
	case code == "NoSuchKey" || (status == http.StatusNotFound && code != "NoSuchBucket"):
		return blockstore.ErrPackNotFound, false
	case status == http.StatusForbidden || code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return ErrAccessDenied, false
	case status == http.StatusPreconditionFailed || code == "PreconditionFailed":
		return ErrExists, false
	case status == http.StatusNotImplemented || code == "NotImplemented":
		return ErrNotImplemented, false
	case status == http.StatusConflict && code == "ConditionalRequestConflict":
		return nil, true // a concurrent conditional write; retry decides
	case status >= 500, status == http.StatusTooManyRequests, status == http.StatusRequestTimeout,
		code == "RequestTimeout", code == "SlowDown", code == "RequestTimeTooSkewed":
		return nil, true
	case status != 0:
		return nil, false
	}
	// No answer: the connection failed, timed out or broke mid-body.
	var rse *smithyhttp.RequestSendError
	var ne net.Error
	switch {
	case errors.As(err, &rse), errors.As(err, &ne),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded):
		return nil, true
	}
	return nil, false
}

// backoff returns the wait before attempt n+1 (n ≥ 1): exponential from
// base, capped, with full jitter in its upper half so that clients that
// failed together do not retry together.
func backoff(n int, base, maxWait time.Duration) time.Duration {
	d := base << min(n-1, 20)
	if d <= 0 || d > maxWait {
		d = maxWait
	}
	return d/2 + rand.N(d/2+1)
}
