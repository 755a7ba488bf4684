package s3packs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"csbs/blockstore"
)

// Config configures S3Packs. Zero values mean the defaults filled in by
// withDefaults.
type Config struct {
	Endpoint    string // http(s)://host[:port]
	Bucket      string
	Region      string // default us-east-1
	PathStyle   bool   // bucket in the path, not the host name (most self-hosted servers)
	Prefix      string // key prefix inside the bucket, "" or ending in "/"
	Credentials Credentials
	// NoCreateOnly sends plain PUTs, without If-None-Match: *, for
	// providers that reject conditional writes.
	NoCreateOnly bool

	CacheDir   string // local cache directory; empty: no cache
	CacheBytes int64  // cache bound; default 1 GiB
	ChunkSize  int64  // cache fill granularity; default 1 MiB
	ReadAhead  int    // chunks fetched ahead of a sequential reader; default 8, -1 none

	MaxInFlight    int           // requests at once; default 32
	MaxAttempts    int           // tries per request; default 6
	RetryBase      time.Duration // first backoff; default 250ms
	RetryMax       time.Duration // backoff cap; default 4s
	RequestTimeout time.Duration // per attempt, plus 1 s per MiB of a PUT; default 1m

	HTTPClient *http.Client // default: a pooled client sized for MaxInFlight
	Logger     *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.CacheBytes <= 0 {
		c.CacheBytes = 1 << 30
	}
	if c.ChunkSize <= 0 {
		c.ChunkSize = 1 << 20
	}
	if c.ReadAhead == 0 {
		c.ReadAhead = 8
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 32
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 6
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 250 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 4 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// S3Packs keeps packs as objects in a bucket, with a local cache. It is
// safe for concurrent use; nothing serializes reads (up to MaxInFlight
// requests run at once).
type S3Packs struct {
	cfg    Config
	client *s3.Client
	cache  *cache // nil without CacheDir
	sem    chan struct{}
	log    *slog.Logger
	st     opStats
}

var _ blockstore.PackStore = (*S3Packs)(nil)

// Operation names, as in RequestError.Op and Stats.Requests.
const (
	OpPut    = "PUT"
	OpGet    = "GET"
	OpHead   = "HEAD"
	OpDelete = "DELETE"
	OpList   = "LIST"
)

var allOps = []string{OpPut, OpGet, OpHead, OpDelete, OpList}

type opStats struct {
	requests  [5]atomic.Int64
	failures  [5]atomic.Int64
	retries   atomic.Int64
	bytesUp   atomic.Int64
	bytesDown atomic.Int64
}

func opIndex(op string) int {
	for i, o := range allOps {
		if o == op {
			return i
		}
	}
	return 0
}

// Open connects to the bucket and opens the cache. A wrong endpoint URL,
// a missing bucket or refused credentials fail here, with an error that
// says which setting to fix; an endpoint that does not answer is only
// logged (the appliance still serves what its cache holds, and requests
// retry later).
func Open(ctx context.Context, cfg Config) (*S3Packs, error) {
	cfg = cfg.withDefaults()
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("store.s3.endpoint %q: want http://host:port or https://host", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("store.s3.bucket is empty")
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          cfg.MaxInFlight * 2,
			MaxIdleConnsPerHost:   cfg.MaxInFlight * 2,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: cfg.RequestTimeout,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}}
	}
	s := &S3Packs{cfg: cfg, sem: make(chan struct{}, cfg.MaxInFlight), log: cfg.Logger}
	s.client = s3.New(s3.Options{
		Region:       cfg.Region,
		BaseEndpoint: aws.String(cfg.Endpoint),
		UsePathStyle: cfg.PathStyle,
		Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(
			cfg.Credentials.AccessKeyID, cfg.Credentials.SecretAccessKey, cfg.Credentials.SessionToken)),
		HTTPClient: hc,
		// Retries are ours (do), so that every attempt is counted and a
		// failure that outlives them says so.
		Retryer: aws.NopRetryer{},
		// Several S3-compatible servers reject the SDK's default CRC
		// checksum headers and trailers.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	if err := s.checkBucket(ctx); err != nil {
		return nil, err
	}
	if cfg.CacheDir != "" {
		dir, err := s.cacheNamespace(cfg.CacheDir)
		if err != nil {
			return nil, err
		}
		s.cache, err = newCache(dir, cfg.CacheBytes, cfg.ChunkSize, max(cfg.ReadAhead, 0), s.fetchChunk, s.log)
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// cacheNamespace returns the cache directory of this endpoint, bucket and
// prefix inside root, and deletes the caches of other buckets: a pack
// number names the same bytes only within one bucket and prefix.
func (s *S3Packs) cacheNamespace(root string) (string, error) {
	sum := sha256.Sum256([]byte(s.cfg.Bucket + "\x00" + s.cfg.Prefix))
	name := hex.EncodeToString(sum[:4])
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("pack cache %s: %w", root, err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("pack cache %s: %w", root, err)
	}
	for _, e := range ents {
		if e.Name() != name {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
	return filepath.Join(root, name), nil
}

// checkBucket asks for the bucket once, so that a wrong bucket or
// wrong credentials stop the daemon at start with a clear error.
func (s *S3Packs) checkBucket(ctx context.Context) error {
	err := s.do(ctx, OpHead, "", s.cfg.RequestTimeout, func(ctx context.Context) error {
		_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.cfg.Bucket)})
		s.count(ctx, OpHead, 0, 0)
		if statusOf(err) == http.StatusNotFound {
			return &bucketNotFound{err}
		}
		return err
	})
	var re *RequestError
	if errors.As(err, &re) && re.Kind == nil && re.Attempts >= s.cfg.MaxAttempts {
		s.log.Warn("s3 endpoint does not answer; starting anyway (requests will retry)", "endpoint", s.cfg.Endpoint, "bucket", s.cfg.Bucket, "err", err)
		return nil
	}
	return err
}

// bucketNotFound marks a 404 on HeadBucket, whose answer has no body and
// so no error code.
type bucketNotFound struct{ err error }

func (b *bucketNotFound) Error() string { return b.err.Error() }
func (b *bucketNotFound) Unwrap() error { return b.err }

// Key returns the object key of pack num.
func (s *S3Packs) Key(num uint64) string {
	return fmt.Sprintf("%spacks/%02x/%016x.pack", s.cfg.Prefix, spread(num), num)
}

// spread mixes a pack number into one byte (splitmix64's finalizer), so
// that consecutive packs fall under different key prefixes.
func spread(num uint64) byte {
	x := num
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return byte(x)
}

func (s *S3Packs) packsPrefix() string { return s.cfg.Prefix + "packs/" }

// parseKey returns the pack number of a key under packsPrefix.
func (s *S3Packs) parseKey(key string) (uint64, bool) {
	rest, ok := strings.CutPrefix(key, s.packsPrefix())
	if !ok {
		return 0, false
	}
	dir, file, ok := strings.Cut(rest, "/")
	name, isPack := strings.CutSuffix(file, ".pack")
	if !ok || !isPack || len(dir) != 2 || len(name) != 16 {
		return 0, false
	}
	num, err := strconv.ParseUint(name, 16, 64)
	return num, err == nil
}

// do runs one request with retries: attempt runs with its own timeout;
// transient failures are retried with backoff; the final failure is a
// *RequestError.
func (s *S3Packs) do(ctx context.Context, op, key string, timeout time.Duration, attempt func(ctx context.Context) error) error {
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := attempt(actx)
		cancel()
		if err == nil {
			return nil
		}
		s.st.failures[opIndex(op)].Add(1)
		if ctx.Err() != nil {
			return fmt.Errorf("s3 %s %s: %w", op, key, ctx.Err())
		}
		kind, retry := classify(err)
		var bnf *bucketNotFound
		if errors.As(err, &bnf) {
			kind, retry = ErrNoSuchBucket, false
		}
		if errors.Is(err, errPastEnd) {
			return err
		}
		if !retry || n >= s.cfg.MaxAttempts {
			return &RequestError{Op: op, Endpoint: s.cfg.Endpoint, Bucket: s.cfg.Bucket, Key: key, Attempts: n, Kind: kind, Err: err, Hint: s.hint(op, kind)}
		}
		s.st.retries.Add(1)
		wait := backoff(n, s.cfg.RetryBase, s.cfg.RetryMax)
		s.log.Debug("s3 request failed; retrying", "op", op, "key", key, "attempt", n, "wait", wait, "err", describe(err))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("s3 %s %s: %w", op, key, ctx.Err())
		}
	}
}

// hint says which setting fixes a permanent failure.
func (s *S3Packs) hint(op string, kind error) string {
	switch kind {
	case ErrAccessDenied:
		return "check access_key_id and secret_access_key (store.s3.credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and the user's rights on the bucket"
	case ErrNoSuchBucket:
		return "create the bucket, or fix store.s3.bucket and store.s3.endpoint"
	case ErrNotImplemented:
		if op == OpPut && !s.cfg.NoCreateOnly {
			return "the endpoint rejects create-only PUTs (If-None-Match: *); set store.s3.create_only = false"
		}
	case ErrExists:
		return "pack numbers are unique per bucket and prefix: another csbs store writes to the same bucket and prefix (give each its own store.s3.prefix), or this store's index is older than the bucket (csbs store rebuild-index reserves numbers past every pack in the bucket)"
	}
	return ""
}

// count records one request in the global figures and the job's counter.
func (s *S3Packs) count(ctx context.Context, op string, up, down int64) {
	s.st.requests[opIndex(op)].Add(1)
	s.st.bytesUp.Add(up)
	s.st.bytesDown.Add(down)
	switch op {
	case OpPut:
		blockstore.IOCounterFrom(ctx).AddPut(up)
	case OpGet:
		blockstore.IOCounterFrom(ctx).AddGet(down)
	}
}

func (s *S3Packs) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *S3Packs) release() { <-s.sem }

// Put uploads the staged pack with a create-only PUT, then keeps the file
// in the cache.
func (s *S3Packs) Put(ctx context.Context, num uint64, staged string, size int64) error {
	key := s.Key(num)
	f, err := os.Open(staged)
	if err != nil {
		return fmt.Errorf("put pack %016x: %w", num, err)
	}
	defer f.Close()
	attempts := 0
	err = s.do(ctx, OpPut, key, s.cfg.RequestTimeout+time.Duration(size>>20)*time.Second, func(actx context.Context) error {
		attempts++
		if err := s.acquire(actx); err != nil {
			return err
		}
		defer s.release()
		in := &s3.PutObjectInput{
			Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key),
			Body: io.NewSectionReader(f, 0, size), ContentLength: aws.Int64(size),
			ContentType: aws.String("application/octet-stream"),
		}
		if !s.cfg.NoCreateOnly {
			in.IfNoneMatch = aws.String("*")
		}
		_, err := s.client.PutObject(actx, in)
		s.count(ctx, OpPut, size, 0)
		return err
	})
	if errors.Is(err, ErrExists) && attempts > 1 {
		// An earlier attempt may have stored the pack and lost its answer.
		if same, serr := s.sameObject(ctx, num, f, size); serr == nil && same {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	if s.cache != nil {
		f.Close()
		s.cache.adopt(num, staged, size)
	} else {
		os.Remove(staged)
	}
	return nil
}

// sameObject reports whether pack num in the bucket has the staged
// pack's size and trailer; the trailer holds the checksum of the header
// and of the footer, which lists every block's hash, offset and length.
func (s *S3Packs) sameObject(ctx context.Context, num uint64, f *os.File, size int64) (bool, error) {
	const tail = 32
	if size < tail {
		return false, nil
	}
	mine := make([]byte, tail)
	if _, err := f.ReadAt(mine, size-tail); err != nil {
		return false, err
	}
	theirs := make([]byte, tail)
	n, total, err := s.getRange(ctx, num, theirs, size-tail)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return total == size && n == tail && bytes.Equal(mine, theirs), nil
}

// ReadAt reads through the cache, or straight from the bucket for reads
// marked blockstore.ReadOnce.
func (s *S3Packs) ReadAt(ctx context.Context, num uint64, p []byte, off int64) (int, error) {
	if s.cache != nil && blockstore.ReadHintFrom(ctx) != blockstore.ReadOnce {
		n, err := s.cache.readAt(ctx, num, p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return n, fmt.Errorf("read pack %016x at %d: %w", num, off, err)
		}
		return n, err
	}
	n, _, err := s.getRange(ctx, num, p, off)
	if errors.Is(err, errPastEnd) {
		return 0, io.EOF
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("read pack %016x at %d: %w", num, off, err)
	}
	return n, err
}

// fetchChunk reads one cache chunk of a pack.
func (s *S3Packs) fetchChunk(ctx context.Context, num uint64, ch int64) ([]byte, int64, error) {
	buf := make([]byte, s.cfg.ChunkSize)
	n, size, err := s.getRange(ctx, num, buf, ch*s.cfg.ChunkSize)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	if errors.Is(err, io.EOF) {
		err = errPastEnd
	}
	return buf[:n], size, err
}

// getRange reads len(p) bytes at off with one ranged GET (retried). It
// returns the pack's size when the answer told it (-1 otherwise), and
// io.EOF when the pack ends before p is full, errPastEnd when off is at
// or past its end.
func (s *S3Packs) getRange(ctx context.Context, num uint64, p []byte, off int64) (int, int64, error) {
	if len(p) == 0 {
		return 0, -1, nil
	}
	key := s.Key(num)
	var n int
	size := int64(-1)
	err := s.do(ctx, OpGet, key, s.cfg.RequestTimeout, func(actx context.Context) error {
		n = 0
		if err := s.acquire(actx); err != nil {
			return err
		}
		defer s.release()
		out, err := s.client.GetObject(actx, &s3.GetObjectInput{
			Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key),
			Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1)),
		})
		if err != nil {
			s.count(ctx, OpGet, 0, 0)
			if statusOf(err) == http.StatusRequestedRangeNotSatisfiable {
				return errPastEnd
			}
			return err
		}
		defer out.Body.Close()
		body := io.Reader(out.Body)
		want := int64(len(p))
		if out.ContentRange != nil {
			if total, ok := parseContentRange(*out.ContentRange); ok {
				size = total
				want = min(want, total-off)
			}
		} else {
			// The whole object came back (the range was ignored).
			if out.ContentLength != nil {
				size = *out.ContentLength
				want = min(want, size-off)
			}
			if _, err := io.CopyN(io.Discard, body, off); err != nil {
				s.count(ctx, OpGet, 0, off)
				return err
			}
		}
		if want <= 0 {
			s.count(ctx, OpGet, 0, 0)
			return errPastEnd
		}
		n, err = io.ReadFull(body, p[:want])
		s.count(ctx, OpGet, 0, int64(n))
		return err
	})
	if err != nil {
		return n, size, err
	}
	if n < len(p) {
		return n, size, io.EOF
	}
	return n, size, nil
}

// parseContentRange reads the total of "bytes 0-99/1234".
func parseContentRange(v string) (int64, bool) {
	_, total, ok := strings.Cut(v, "/")
	if !ok || total == "*" {
		return 0, false
	}
	t, err := strconv.ParseInt(total, 10, 64)
	return t, err == nil
}

// Delete removes the pack from the bucket and the cache.
func (s *S3Packs) Delete(ctx context.Context, num uint64) error {
	key := s.Key(num)
	if s.cache != nil {
		s.cache.drop(num)
	}
	err := s.do(ctx, OpDelete, key, s.cfg.RequestTimeout, func(actx context.Context) error {
		if err := s.acquire(actx); err != nil {
			return err
		}
		defer s.release()
		_, err := s.client.DeleteObject(actx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)})
		s.count(ctx, OpDelete, 0, 0)
		return err
	})
	if errors.Is(err, blockstore.ErrPackNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete pack %016x: %w", num, err)
	}
	return nil
}

// List lists every pack object under the prefix, one page (up to 1000
// keys) per request.
func (s *S3Packs) List(ctx context.Context, fn func(num uint64, size int64) error) error {
	var token *string
	for {
		var out *s3.ListObjectsV2Output
		err := s.do(ctx, OpList, s.packsPrefix(), s.cfg.RequestTimeout, func(actx context.Context) error {
			if err := s.acquire(actx); err != nil {
				return err
			}
			defer s.release()
			var err error
			out, err = s.client.ListObjectsV2(actx, &s3.ListObjectsV2Input{
				Bucket: aws.String(s.cfg.Bucket), Prefix: aws.String(s.packsPrefix()), ContinuationToken: token,
			})
			s.count(ctx, OpList, 0, 0)
			return err
		})
		if err != nil {
			return fmt.Errorf("list packs: %w", err)
		}
		for _, o := range out.Contents {
			if o.Key == nil {
				continue
			}
			num, ok := s.parseKey(*o.Key)
			if !ok {
				continue
			}
			if err := fn(num, aws.ToInt64(o.Size)); err != nil {
				return err
			}
		}
		if !aws.ToBool(out.IsTruncated) || out.NextContinuationToken == nil {
			return nil
		}
		token = out.NextContinuationToken
	}
}

// Close stops the cache's read-ahead.
func (s *S3Packs) Close() error {
	if s.cache != nil {
		s.cache.close()
	}
	return nil
}

// Stats are the object store's figures since Open.
type Stats struct {
	Requests  map[string]int64 `json:"requests"` // by operation, every attempt
	Failures  map[string]int64 `json:"failures"` // attempts that failed
	Retries   int64            `json:"retries"`
	BytesUp   int64            `json:"bytes_up"`
	BytesDown int64            `json:"bytes_down"`
	Cache     CacheStats       `json:"cache"`
}

// Stats returns the request and cache figures.
func (s *S3Packs) Stats() Stats {
	st := Stats{Requests: map[string]int64{}, Failures: map[string]int64{},
		Retries: s.st.retries.Load(), BytesUp: s.st.bytesUp.Load(), BytesDown: s.st.bytesDown.Load()}
	for i, op := range allOps {
		st.Requests[op] = s.st.requests[i].Load()
		st.Failures[op] = s.st.failures[i].Load()
	}
	if s.cache != nil {
		st.Cache = s.cache.stats()
	}
	return st
}

// Describe names the bucket for status and logs: endpoint, bucket and
// prefix, never credentials.
func (s *S3Packs) Describe() string {
	return fmt.Sprintf("%s/%s/%s", strings.TrimSuffix(s.cfg.Endpoint, "/"), s.cfg.Bucket, s.cfg.Prefix)
}
