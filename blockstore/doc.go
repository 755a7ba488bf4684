// Package blockstore keeps disk images as deduplicated, compressed,
// content-addressed blocks: block bytes in immutable pack files, block
// maps in map files, and an index, the map headers and the catalog in one
// Badger database.
//
// # Model
//
// A disk is cut into fixed-size blocks (64 KiB unless chosen otherwise when
// the store is created; the size is recorded in the store and cannot change).
// A block is stored once under its BLAKE3-256 hash. All-zero blocks are never
// stored. A disk in a backup is a block map: the list of block hashes in disk
// order, kept in fixed segments of SegmentEntries hashes each in the map's
// own file, so that block i is found with one read whatever the disk size.
// A segment whose blocks are all zero is not written, which keeps sparse
// disks cheap.
//
// # Layout
//
//	<dir>/                   Badger: the index, map headers, pack table, catalog
//	<dir>/packs/<xx>/<n>.pack block values, sealed and never changed (pack.go)
//	<dir>/maps/<id>.map      block maps (mapfile.go)
//	<dir>/staging/           packs being written
//
// Badger keys:
//
//	meta/<name>              store format, block size, pack number reservation
//	i/<hash 32B>             index: pack number u64 | value offset u32 | value length u32
//	p/<pack u64 BE>          pack table: size, block count, creation time
//	m/<map 16B>              map header (JSON): size, block size, stats, stored segments
//	c/...                    reserved for the catalog (package catalog)
//
// Every Badger value is small and lives inside its LSM tree; the value log,
// whose space does not reliably come back, stays unused.
//
// # Guarantees
//
//   - Every block read re-hashes the decompressed bytes; a mismatch is a
//     *CorruptBlockError naming the block and the map, never wrong data.
//   - A block is indexed only after its pack is synced and in place, so no
//     lookup (no dedupe) ever finds a block whose bytes could be lost.
//   - Ingest writes blocks and the map file under a fresh map id that
//     nothing refers to; the map becomes visible only when Commit writes
//     its header, in one Badger transaction together with whatever the
//     caller adds (the catalog's backup record). A crash before that leaves
//     only orphans that garbage collection reclaims. Commit syncs the
//     database before and after the header is written, so a reported
//     commit survives power loss.
//   - GC and scrub work from one snapshot taken under the lock that Commit
//     publishes under; gc.go proves why no live block is ever freed, and
//     interleave_test.go stops each side at every step to check it.
//   - Deleting backups and running GC gives the space back: map files are
//     deleted at once, packs without a live block are deleted, packs that
//     are mostly garbage are repacked.
//
// # Reading
//
// A Volume reads a map as a disk image. Block i's hash comes from the
// volume's own memo of recent segments (no lock), the block from, in
// order: the block cache (decoded, verified blocks shared by every
// volume, sharded so that a hit takes no global lock), the volume's
// read cache file when it has one (ReadCache: attached NBD exports keep
// blocks read twice there, checked by a CRC32C per 4 KiB on every read),
// or its pack: one index lookup, one pread, decode, BLAKE3. The blocks of
// one request that must be loaded are looked up in one Badger
// transaction and loaded by up to Workers goroutines; sequential streams
// (eight per volume, told apart by offset) get read-ahead. Readers that
// stream a whole disk once (restores, hydration) use BlockTo: their own
// buffer, no cache insertion. Options.Workers (GOMAXPROCS by default)
// sizes the zstd decoders and encoders and every pool of workers;
// Budget (Options.InflightBytes) bounds the bytes in flight across
// read-ahead, NBD buffers, restores and hydration.
//
// # Caveats
//
// Badger runs with SyncWrites=false for speed; durability comes from the
// explicit syncs in Commit and when packs are published.
package blockstore
