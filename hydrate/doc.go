// Package hydrate is instant restore: a writable disk that a VM can use at
// once, made of a backup volume and a target (image file or block device).
//
// Layers, each small: Bitmap (which blocks the target holds, persistent,
// with a write-ahead journal of guest writes), Device (reads from the
// target where the bitmap says so and from the backup elsewhere, copying
// what it read from the backup to the target on the way; writes go to
// the target, filling a partly written block from the backup first), and
// Hydrator (copies the remaining blocks in the background with several
// workers, rate-limited and pausable).
//
// Copy-on-read. A guest read of a block the target does not hold yet
// decodes and verifies the block anyway; writing it to the target as
// well costs a pwrite into the page cache, and then the guest's next
// read of it is a pread and the hydrator skips it. A copy-on-read is a
// hydration step like the hydrator's: under the block's lock, only if
// the block is still missing, its bit set in memory at once and made
// durable by the next sync point (rule 1 below). Zero blocks of a fresh
// target are not copied on read; they read as zeroes either way.
//
// The hydrator runs GOMAXPROCS workers (Options.Workers) on extents of
// 16 blocks in disk order, decoding each block into the worker's own
// buffer outside the block's lock and writing it under the lock if the
// block is still missing. A syncer beside them makes a sync point after
// every 64 MiB written or every second, so write-back overlaps decoding.
// The rate limit is taken for every block before it is written, from a
// Limiter that the hydrators of one restore share (its disks hydrate at
// once). TRIM zeroes the whole blocks of its range like a guest write of
// zeroes (journal records first for blocks without a durable bit) and
// punches a hole in a file target; such blocks are never hydrated.
//
// When every block is in the target, the target is a plain disk image:
// the backup plus the guest's writes. The target and the state files are
// reached through File (*os.File in the daemon), so that tests can run
// everything on files that lose power.
//
// Concurrency: block-level locks (striped) make the hydrator and guest
// writes to the same block take turns, so a hydrated copy never lands on
// top of a guest write.
//
// # Durability
//
// The promise is that of a disk with a volatile write cache:
//
//   - a kill of the daemon (SIGKILL) loses no acknowledged write;
//   - FLUSH, and FUA on a write, make the writes acknowledged before them
//     survive a power loss;
//   - after a power loss every sector of the disk holds either the
//     backup's bytes or bytes a guest wrote there, never anything else
//     (not the target's old content, not zeroes the backup does not have).
//
// The danger is the bitmap: its bit says "read this block from the
// target, never copy the backup over it". The kernel writes dirty pages
// back in any order, so a bit written with its data can reach the disk
// before the data, and after a power loss the target would serve stale
// bytes as if a guest had written them. Hence:
//
//  1. A bit reaches the bits file only after an fdatasync of the target
//     covered the block's data, and counts as durable (Bitmap.Durable)
//     only after the bits file itself was synced. Bits never go back to 0.
//  2. A guest write to a block whose bit is not durable first appends, to
//     the journal, one record per 4 KiB sector it touches: the sector and
//     a 128-bit BLAKE3 hash of the content the sector will have. Then the
//     data is written (after a fill from the backup for a partial block),
//     then the write is acknowledged. Records and data are in the page
//     cache by then, which is what a kill leaves intact; nothing is
//     synced. A write to a block whose bit is durable needs no record: a
//     power loss leaves each of its sectors old or new, both a guest's or
//     the backup's bytes.
//  3. A sync point (every Flush, the hydrator's periodic flush, a journal
//     over 16 MiB) swaps the two journal files under a gate that waits for
//     writes between their record and their data, and takes the list of
//     blocks hydrated (by the hydrator or a copy-on-read) since the last
//     point, whose data was written before they entered it; then it
//     fdatasyncs the target, writes and syncs the bits of every block
//     recorded in the swapped-out file and of the hydrated ones, and only
//     then empties that file. New writes record in the other file, and
//     new hydrations enter a new list, meanwhile. A sync point that fails
//     keeps its blocks for the next.
//  4. Recovery (NewDevice, before the export serves) reads both journal
//     files. For each recorded block whose bit is not durable it reads the
//     block from the target and keeps every sector whose hash matches a
//     record of that sector; every other sector gets the backup's bytes.
//     It then fdatasyncs the target, makes the bits of those blocks
//     durable and empties the journal.
//
// Why this keeps the promise. After a kill, the page cache holds every
// record and every write that was acknowledged, and records precede data,
// so every sector of a recorded block holds content that a record names
// (a kill tears a write only at page boundaries, and sectors are pages)
// or the backup's bytes from a fill: recovery keeps all of it. After a
// power loss, a recorded sector is kept only if its content is exactly
// one a guest wrote; anything else (stale target bytes, a torn sector)
// becomes the backup's bytes, which is allowed because that write was
// never flushed: a flushed write's block had its bit made durable by the
// sync point of that flush, after the data, and recovery does not touch
// blocks with durable bits. Blocks without records and without a durable
// bit are copied from the backup by the hydrator, as before the crash.
// Lost records or a lost truncation of a journal file are harmless: a
// missing record can only turn an unflushed sector back into the
// backup's bytes, and a stale record belongs to a block whose bit is
// already durable.
//
// A restore whose target was created by csbs skips zero blocks entirely
// (fresh): the new sparse file reads zeroes there already.
package hydrate
