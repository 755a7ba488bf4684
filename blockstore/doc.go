// Package blockstore keeps disk images as deduplicated, compressed,
// content-addressed blocks in one Badger database.
//
// # Model
//
// A disk is cut into fixed-size blocks (64 KiB unless chosen otherwise when
// the store is created; the size is recorded in the store and cannot change).
// A block is stored once under its BLAKE3-256 hash. All-zero blocks are never
// stored. A disk in a backup is a block map: the list of block hashes in disk
// order, kept in fixed segments of SegmentEntries hashes each, so that block i
// is found with one segment lookup whatever the disk size. A segment whose
// blocks are all zero is not stored at all, which keeps sparse disks cheap.
//
// # Key layout
//
//	meta/<name>              store format and block size
//	b/<hash 32B>             codec byte + block payload
//	s/<map 16B><seg u64 BE>  map segment: n × 32-byte hashes (zero hash = zero block)
//	m/<map 16B>              map header (JSON): size, block size, stats
//	c/...                    reserved for the catalog (package catalog)
//
// # Guarantees
//
//   - Every block read re-hashes the decompressed bytes; a mismatch is an
//     *CorruptBlockError naming the block and the map, never wrong data.
//   - Ingest writes blocks and segments under a fresh map id that nothing
//     refers to; the map becomes visible only when Commit writes its header,
//     in one Badger transaction together with whatever the caller adds (the
//     catalog's backup record). A crash before that leaves only orphans that
//     garbage collection reclaims. Commit syncs the database before and after
//     the header is written, so a reported commit survives power loss.
//
// # Caveats
//
// Badger runs with SyncWrites=false for speed; durability comes from the
// explicit syncs in Commit. Blocks live in the value log (ValueThreshold is
// far below the block size), so deleted blocks return their space only when
// value-log GC rewrites a file.
package blockstore
