// Package s3packs keeps a block store's packs in an S3-compatible bucket:
// the object-store backend (store.backend = "s3"). S3Packs implements
// blockstore.PackStore; Badger stays the local index and catalog.
//
// # Model
//
// A pack is one object, <prefix>packs/<xx>/<num as 16 hex>.pack, where xx
// is a byte of a hash of the pack number: consecutive packs land under
// different prefixes, which object stores partition by. A pack is written
// once with a create-only PUT (If-None-Match: *), so a second writer or an
// index that went back in time can never overwrite a pack; it is read
// with range GETs, deleted by GC, and listed only by GC's orphan pass and
// by rebuild-index, never on a read or write path.
//
// # Cache
//
// A bounded cache on local disk (Config.CacheDir, Config.CacheBytes)
// sits in front of the bucket. A pack just written is kept whole (the
// staged file is renamed into the cache after the PUT), so the newest
// backups read at local speed. A read that misses fetches the aligned
// chunk (Config.ChunkSize) around it with one GET; reads that walk a pack
// in order (restores, hydration, a booting VM) start GETs for the next
// chunks ahead, several in flight, and concurrent misses of one chunk
// share one GET. The cache evicts whole packs, least recently used
// first. Reads marked blockstore.ReadOnce (scrub, GC's repack,
// rebuild-index) bypass the cache both ways: scrub verifies the
// bucket's bytes, not a local copy.
//
// # Errors and retries
//
// 5xx answers, throttling, timeouts and broken connections are retried
// with exponential backoff and jitter (Config.MaxAttempts). What retrying
// cannot fix fails at once with a *RequestError that names the operation,
// bucket, key and endpoint (never the credentials) and wraps one of
// ErrAccessDenied, ErrNoSuchBucket, ErrExists or ErrNotImplemented for
// callers to branch on, or blockstore.ErrPackNotFound for a missing pack.
//
// # Caveats
//
// The cache trusts the local disk as the index does; blocks read from it
// are verified by their hash like any other. A PUT whose answer was lost
// and whose retry is refused as "exists" is accepted only when the
// object's size and trailer (which carries the footer checksum) equal the
// staged pack's.
package s3packs
