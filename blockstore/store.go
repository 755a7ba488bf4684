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
	"strings"
	"sync"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
	"github.com/dgraph-io/badger/v4/options"
)

// DefaultBlockSize is the block size of a new store when none is chosen.
const DefaultBlockSize = 64 << 10

// SegmentEntries is the number of block hashes in one map segment. With 64 KiB
// blocks one segment covers 64 MiB of disk in 32 KiB of hashes.
const SegmentEntries = 1024

// Store format "2" keeps block bytes in pack files and block maps in map
// files; "1" (csbs before packs) kept both in Badger and is upgraded by
// Open (migrate.go).
const formatVersion = "2"

var (
	keyMetaFormat    = []byte("meta/format")
	keyMetaBlockSize = []byte("meta/blocksize")
	keyMetaPackSeq   = []byte("meta/packseq") // pack numbers below it may have been used
	// keyMetaRemovals counts index entries scrub removed as damaged, ever.
	// GC never removes a live block, so a map committed when the count
	// was n still has every block while the count is n.
	keyMetaRemovals = []byte("meta/removals")
)

// Key prefixes; see the package documentation.
const (
	prefixIndex = "i/"
	prefixMap   = "m/"
	prefixPack  = "p/"
)

// Directories inside the store directory (Badger's files sit at its top).
const (
	packsDir   = "packs"
	mapsDir    = "maps"
	stagingDir = "staging"
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
	// Workers is the number of hash/compress workers at ingest, of
	// decode/verify workers per read, and of copy workers in restores
	// and hydration; default GOMAXPROCS.
	Workers int
	// InflightBytes is the budget for block data in flight (read-ahead,
	// NBD buffers, restore and hydration buffers): see Budget; default
	// 8 MiB per worker, at least 64 MiB.
	InflightBytes int64
	// ReadOnly opens the database without writing.
	ReadOnly bool
	// Logger receives Badger's warnings and errors; default discards.
	Logger *slog.Logger
	// MinFree is the free space ingest never eats into (see space.go);
	// default DefaultMinFree.
	MinFree int64
	// PackSize is the size at which a pack is sealed; default
	// DefaultPackSize, at most MaxPackSize.
	PackSize int
	// RepackBelow: GC copies the live blocks out of a pack whose live
	// share of bytes fell below it, then deletes the pack; default 0.8.
	RepackBelow float64
	// Packs is where pack files live; default LocalPacks under the store
	// directory.
	Packs PackStore
	// Hook, if set, is called at every HookPoint; tests use it to run the
	// interleavings of ingest, commit, GC and scrub. Nil in production.
	Hook func(HookPoint)
}

func (o Options) withDefaults() Options {
	if o.CacheBytes == 0 {
		o.CacheBytes = 64 << 20
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.InflightBytes <= 0 {
		o.InflightBytes = max(64<<20, int64(o.Workers)*8<<20)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	if o.PackSize <= 0 {
		o.PackSize = DefaultPackSize
	}
	o.PackSize = min(o.PackSize, MaxPackSize)
	if o.RepackBelow <= 0 {
		o.RepackBelow = 0.8
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
	budget    *Budget
	segCache  *segmentCache
	codecs    *codecSet
	gate      *gcGate
	packs     PackStore
	mapFiles  *fileCache
	valueBufs sync.Pool // *[]byte: stored values read for decoding

	// mu orders commits against GC's and scrub's snapshots: a map leaves
	// pending only in the same critical section that makes its header
	// visible, and a pack leaves writing only once its blocks are indexed.
	mu        sync.Mutex
	pending   map[MapID]*mapWriter // maps being written (or written, not yet committed)
	importing map[MapID]*mapWriter // staged imports open for writing
	finished  map[MapID]struct{}   // imports finished, not yet committed or aborted
	writing   map[uint64]struct{}  // packs allocated whose blocks are not yet indexed
	nextPack  uint64
	packLimit uint64 // numbers below it are reserved in meta/packseq
	damage    damageLog
	// removeMu keeps scrub from removing a damaged block between a
	// commit's damage check and its header: commits hold it for reading
	// from the one to the other, scrub's removals for writing.
	removeMu sync.RWMutex
	gcMu     sync.Mutex // one GC at a time
	scrubMu  sync.Mutex // one scrub at a time

	// closeMu makes Close wait for reads in progress and fail later ones:
	// Badger panics when a closed DB is read.
	closeMu  sync.RWMutex
	closed   bool
	bg       sync.WaitGroup // background reads (read-ahead)
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

// Open opens or creates the store in dir. A store of an earlier format is
// upgraded first (see migrate.go).
func Open(dir string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	if opts.BlockSize != 0 {
		if err := validBlockSize(opts.BlockSize); err != nil {
			return nil, err
		}
	}
	if !opts.ReadOnly {
		// Before the directory is created: an upgrade interrupted between
		// its two renames left the new store under another name.
		if err := migrateIfNeeded(dir, opts); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return openCurrent(dir, opts)
}

func openCurrent(dir string, opts Options) (*Store, error) {
	for _, sub := range []string{mapsDir, stagingDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	packs := opts.Packs
	if packs == nil {
		var err error
		if packs, err = NewLocalPacks(filepath.Join(dir, packsDir)); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	db, err := openBadger(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	bs, err := initMeta(db, opts)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	codecs, err := newCodecSet(opts.Workers)
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
		budget:    NewBudget(opts.InflightBytes),
		segCache:  newSegmentCache(256),
		codecs:    codecs,
		gate:      newGCGate(),
		packs:     packs,
		mapFiles:  newFileCache(64),
		valueBufs: sync.Pool{New: func() any { b := make([]byte, 0, bs+bs/8); return &b }},
		pending:   map[MapID]*mapWriter{},
		importing: map[MapID]*mapWriter{},
		finished:  map[MapID]struct{}{},
		writing:   map[uint64]struct{}{},
	}
	if err := s.loadPackSeq(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if !opts.ReadOnly {
		// Staged packs belong to ingests that died with the process:
		// nothing refers to them.
		staged, _ := filepath.Glob(filepath.Join(dir, stagingDir, "*"))
		for _, f := range staged {
			os.Remove(f)
		}
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
// memtables, a 32 MiB block cache. Badger holds only small values (index
// entries, map headers, the catalog), all inside the LSM tree
// (ValueThreshold at its maximum), so deleted keys give their space back
// through compaction; the value log, whose space comes back only through
// its unreliable GC, stays empty.
// openBadger opens the store's Badger database; a database another
// process holds is ErrInUse (Badger says so only in words: its
// directory lock is taken).
func openBadger(dir string, opts Options) (*badger.DB, error) {
	db, err := badger.Open(badgerOptions(dir, opts))
	if err != nil && strings.Contains(err.Error(), "Cannot acquire directory lock") {
		return nil, fmt.Errorf("%w: %w", ErrInUse, err)
	}
	return db, err
}

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
		WithValueThreshold(maxInlineValue).
		WithNumCompactors(2).
		WithCompression(options.None).
		WithMetricsEnabled(false)
}

// maxInlineValue is Badger's largest ValueThreshold: values up to it live
// in the LSM tree.
const maxInlineValue = 1 << 20

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
		if err := checkFormat(db); err != nil {
			return 0, err
		}
		if opts.BlockSize != 0 && opts.BlockSize != bs {
			return 0, fmt.Errorf("%w: store has %d-byte blocks, %d requested", ErrBlockSizeMismatch, bs, opts.BlockSize)
		}
		return bs, nil
	}
	if opts.ReadOnly {
		return 0, fmt.Errorf("read-only open of an uninitialised store")
	}
	if err := db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(keyMetaFormat)
		return err
	}); err == nil {
		return 0, fmt.Errorf("store metadata has a format but no block size")
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
	s.mapFiles.close()
	perr := s.packs.Close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.dir, err)
	}
	if perr != nil {
		return fmt.Errorf("close store %s: %w", s.dir, perr)
	}
	return nil
}

// BlockSize returns the store's block size in bytes.
func (s *Store) BlockSize() int { return s.blockSize }

// Dir returns the directory of the store.
func (s *Store) Dir() string { return s.dir }

// KV is the database the store keeps its index in, for the catalog to
// keep its records in (under the c/ prefix) and commit them in the same
// transaction as a map header.
func (s *Store) KV() *kv.DB { return kv.New(s.db) }

// Sync makes every write so far durable.
func (s *Store) Sync() error {
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync store %s: %w", s.dir, err)
	}
	return nil
}

// DiskUsage returns the bytes the store's files occupy on the file system
// (allocated blocks, not apparent sizes: Badger's files are preallocated
// sparse). Packs kept by a PackStore other than the local one are not
// counted.
func (s *Store) DiskUsage() (int64, error) {
	n, err := allocatedBytes(s.dir)
	if err != nil {
		return n, fmt.Errorf("disk usage of store %s: %w", s.dir, err)
	}
	return n, nil
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

func indexKey(h Hash) []byte {
	k := make([]byte, len(prefixIndex)+HashSize)
	copy(k, prefixIndex)
	copy(k[len(prefixIndex):], h[:])
	return k
}

func mapKey(id MapID) []byte {
	k := make([]byte, len(prefixMap)+len(id))
	n := copy(k, prefixMap)
	copy(k[n:], id[:])
	return k
}

func packKey(num uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixPack), num)
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

// checkFormat refuses a store whose format this binary cannot read.
func checkFormat(db *badger.DB) error {
	var f []byte
	err := db.View(func(txn *badger.Txn) error {
		var err error
		f, err = getValue(txn, keyMetaFormat)
		return err
	})
	if err != nil {
		return fmt.Errorf("read store format: %w", err)
	}
	if string(f) != formatVersion {
		return fmt.Errorf("store format %q: this csbs reads format %q (a read-only open does not upgrade)", f, formatVersion)
	}
	return nil
}

// packSeqStep is how many pack numbers one write of meta/packseq reserves.
const packSeqStep = 1024

func (s *Store) loadPackSeq() error {
	return s.db.View(func(txn *badger.Txn) error {
		v, err := getValue(txn, keyMetaPackSeq)
		if errors.Is(err, badger.ErrKeyNotFound) {
			s.nextPack, s.packLimit = 1, 1
			return nil
		}
		if err != nil {
			return err
		}
		if len(v) != 8 {
			return fmt.Errorf("meta/packseq of %d bytes", len(v))
		}
		s.nextPack = binary.BigEndian.Uint64(v)
		s.packLimit = s.nextPack
		return nil
	})
}

// allocPack returns a pack number never used before, registered as being
// written. Numbers are reserved in meta/packseq ahead of use, so a number
// is not handed out twice, also across restarts.
func (s *Store) allocPack() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nextPack >= s.packLimit {
		limit := s.nextPack + packSeqStep
		err := s.db.Update(func(txn *badger.Txn) error {
			return txn.Set(keyMetaPackSeq, binary.BigEndian.AppendUint64(nil, limit))
		})
		if err == nil {
			err = s.db.Sync()
		}
		if err != nil {
			return 0, fmt.Errorf("reserve pack numbers: %w", err)
		}
		s.packLimit = limit
	}
	num := s.nextPack
	s.nextPack++
	s.writing[num] = struct{}{}
	return num, nil
}

// settlePack ends a pack's protection as "being written": its blocks are
// indexed (or it was abandoned, and GC may delete it).
func (s *Store) settlePack(num uint64) {
	s.mu.Lock()
	delete(s.writing, num)
	s.mu.Unlock()
}

// publishPack seals a pack, then indexes its blocks and records it in the
// pack table in one batch: a block is found by lookups only once its
// bytes are durable. A hash another ingest indexed meanwhile is pointed
// at this copy; the other copy becomes garbage for GC.
func (s *Store) publishPack(ctx context.Context, pw *packWriter) (packInfo, error) {
	defer pw.release()
	pi, err := pw.seal(ctx)
	if err != nil {
		return pi, err
	}
	s.hook(HookIngestPackSealed)
	if err := s.checkSpace(0); err != nil {
		return pi, err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, e := range pw.entries {
		if err := wb.Set(indexKey(e.h), e.loc.encode()); err != nil {
			return pi, fmt.Errorf("index pack %016x: %w", pw.num, err)
		}
	}
	if err := wb.Set(packKey(pw.num), pi.encode()); err != nil {
		return pi, fmt.Errorf("index pack %016x: %w", pw.num, err)
	}
	if err := wb.Flush(); err != nil {
		return pi, fmt.Errorf("index pack %016x: %w", pw.num, err)
	}
	pw.release()
	s.hook(HookIngestPackIndexed)
	return pi, nil
}
