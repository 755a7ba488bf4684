package blockstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// DefaultBlockSize is the block size of a new store when none is chosen.
const DefaultBlockSize = 64 << 10

// SegmentEntries is the number of block hashes in one map segment. With 64 KiB
// blocks one segment covers 64 MiB of disk in 32 KiB of hashes.
const SegmentEntries = 1024

const formatVersion = "1"

var (
	keyMetaFormat    = []byte("meta/format")
	keyMetaBlockSize = []byte("meta/blocksize")
)

// Key prefixes; see the package documentation.
const (
	prefixBlock   = "b/"
	prefixSegment = "s/"
	prefixMap     = "m/"
)

// Options configure Open. Zero values mean the defaults filled in by
// withDefaults.
type Options struct {
	// BlockSize is used only when the store is created. Opening an existing
	// store with a different non-zero BlockSize is an error.
	BlockSize int
	// Codec compresses new blocks at ingest.
	Codec Codec
	// CacheBytes bounds the cache of decompressed blocks shared by all
	// volume readers.
	CacheBytes int64
	// Workers is the number of hash/compress workers at ingest and of
	// fetch workers in restore; default GOMAXPROCS.
	Workers int
	// ReadOnly opens the database without writing.
	ReadOnly bool
	// Logger receives Badger's warnings and errors; default discards.
	Logger *slog.Logger
	// MinFree is the free space ingest never eats into (see space.go);
	// default DefaultMinFree.
	MinFree int64
}

func (o Options) withDefaults() Options {
	if o.CacheBytes == 0 {
		o.CacheBytes = 64 << 20
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	return o
}

// Store is an open block store. It is safe for concurrent use.
type Store struct {
	dir       string
	db        *badger.DB
	opts      Options
	blockSize int
	zero      []byte // one all-zero block, never written to
	cache     *blockCache
	segCache  *segmentCache
	codecs    *codecSet
	gate      *gcGate

	mu      sync.Mutex
	pending map[MapID]struct{} // maps being written; GC must keep them
	gcMu    sync.Mutex         // one GC or scrub at a time

	// closeMu makes Close wait for reads in progress and fail later ones:
	// Badger panics when a closed DB is read.
	closeMu  sync.RWMutex
	closed   bool
	bg       sync.WaitGroup // background reads (read-ahead)
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	if opts.BlockSize != 0 {
		if err := validBlockSize(opts.BlockSize); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	db, err := badger.Open(badgerOptions(dir, opts))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	bs, err := initMeta(db, opts)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	codecs, err := newCodecSet()
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{
		dir:       dir,
		db:        db,
		opts:      opts,
		blockSize: bs,
		zero:      make([]byte, bs),
		cache:     newBlockCache(opts.CacheBytes),
		segCache:  newSegmentCache(256),
		codecs:    codecs,
		gate:      newGCGate(),
		pending:   map[MapID]struct{}{},
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	return s, nil
}

func validBlockSize(bs int) error {
	if bs < 4096 || bs > 4<<20 || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d: must be a power of two from 4 KiB to 4 MiB", bs)
	}
	return nil
}

// badgerOptions sizes Badger for a ≤256 MiB resident daemon: two 32 MiB
// memtables, a 32 MiB block cache, 128 MiB value-log files (small files
// keep the free-space reserve of space.go small). Blocks and map
// segments (KiBs each) go to the value log, keeping the LSM tree small
// enough that existence checks at ingest stay in memory.
func badgerOptions(dir string, opts Options) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{opts.Logger}).
		WithReadOnly(opts.ReadOnly).
		WithSyncWrites(false).
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(32 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(valueLogFileSize).
		WithValueThreshold(1 << 10).
		WithNumCompactors(2).
		WithCompression(options.None).
		WithMetricsEnabled(false)
}

func initMeta(db *badger.DB, opts Options) (int, error) {
	var bs int
	err := db.View(func(txn *badger.Txn) error {
		v, err := getValue(txn, keyMetaBlockSize)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		bs, err = strconv.Atoi(string(v))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read store metadata: %w", err)
	}
	if bs != 0 {
		if opts.BlockSize != 0 && opts.BlockSize != bs {
			return 0, fmt.Errorf("%w: store has %d-byte blocks, %d requested", ErrBlockSizeMismatch, bs, opts.BlockSize)
		}
		return bs, nil
	}
	if opts.ReadOnly {
		return 0, fmt.Errorf("read-only open of an uninitialised store")
	}
	bs = opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	err = db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(keyMetaFormat, []byte(formatVersion)); err != nil {
			return err
		}
		return txn.Set(keyMetaBlockSize, []byte(strconv.Itoa(bs)))
	})
	if err != nil {
		return 0, fmt.Errorf("write store metadata: %w", err)
	}
	return bs, db.Sync()
}

// Close stops background reads, waits for reads in progress, then flushes
// and closes the database. Reads after Close fail with ErrClosed.
func (s *Store) Close() error {
	s.bgCancel()
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	s.bg.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.dir, err)
	}
	return nil
}

// BlockSize returns the store's block size in bytes.
func (s *Store) BlockSize() int { return s.blockSize }

// Dir returns the directory of the store.
func (s *Store) Dir() string { return s.dir }

// DB exposes the Badger database so that the catalog can keep its records
// in the same store (under the c/ prefix) and commit them in the same
// transaction as a map header.
func (s *Store) DB() *badger.DB { return s.db }

// Sync makes every write so far durable.
func (s *Store) Sync() error {
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync store %s: %w", s.dir, err)
	}
	return nil
}

// DiskUsage returns the bytes Badger's files take on disk.
func (s *Store) DiskUsage() (int64, error) {
	var total int64
	err := filepath.WalkDir(s.dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			total += fi.Size()
		}
		return nil
	})
	return total, err
}

// enter guards a read against Close; call the returned release when done.
func (s *Store) enter() (release func(), err error) {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, ErrClosed
	}
	return s.closeMu.RUnlock, nil
}

// background runs fn in a goroutine that Close waits for; it reports
// false (and does not run fn) once the store is closing.
func (s *Store) background(fn func(ctx context.Context)) bool {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		fn(s.bgCtx)
	}()
	return true
}

func blockKey(h Hash) []byte {
	k := make([]byte, len(prefixBlock)+HashSize)
	copy(k, prefixBlock)
	copy(k[len(prefixBlock):], h[:])
	return k
}

func segmentKey(id MapID, seg int64) []byte {
	k := make([]byte, len(prefixSegment)+len(id)+8)
	n := copy(k, prefixSegment)
	n += copy(k[n:], id[:])
	binary.BigEndian.PutUint64(k[n:], uint64(seg))
	return k
}

func mapKey(id MapID) []byte {
	k := make([]byte, len(prefixMap)+len(id))
	n := copy(k, prefixMap)
	copy(k[n:], id[:])
	return k
}

func getValue(txn *badger.Txn, key []byte) ([]byte, error) {
	item, err := txn.Get(key)
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// badgerLogger forwards Badger's log lines to slog, dropping its chatty
// info and debug lines.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(fmt.Sprintf(f, a...), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(fmt.Sprintf(f, a...), "component", "badger")
}
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
