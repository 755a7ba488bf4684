// Package replication is the destination side of cross-region
// replication: this appliance keeps copies (replicas) of chosen backups
// of other appliances (remotes), pulling only the blocks its store lacks.
//
// # Model
//
// A remote is another appliance's TLS API, the SHA-256 of its
// certificate (the only thing the connection is trusted by) and a
// replication token of one of its projects, kept in a 0600 file under the
// data dir. A replication job copies one remote backup (csbs backup
// replicate) or runs a replication policy (csbs replication create),
// which copies the newest qualifying backups of each server at the times
// of a schedule, by the backup policies' rules.
//
// Copying a backup: its metadata, then per disk a staged map in the
// store (blockstore.BeginImport), filled with the remote's block map;
// the store says which blocks it lacks; those are fetched in batches,
// several requests in flight, verified and stored batch by batch; last,
// the staged maps are finished and committed together with the replica's
// catalog record, so a replica is visible only when complete. The state
// of each remote backup's replication (running, ok, failed with the
// reason, and the staged maps of an unfinished one) is a catalog record
// here; the remote keeps nothing.
//
// # Guarantees
//
//   - A replica has the source backup's name, type, creation time and
//     region, and records its origin; it is never replicated again.
//   - Only available, undamaged backups made on the remote qualify.
//   - Blocks that arrived stay, also across restarts and GC, until the
//     replication completes or is given up; a rerun fetches only what is
//     still missing. A kill loses at most the transfer window: the
//     batches being received (Inflight), the received batches waiting to
//     be stored (Inflight/2) and the PutBlocks in progress.
//   - A broken connection or a failing remote is retried (Retries tries,
//     backing off from Backoff); a refused token, a wrong certificate, a
//     missing backup or damaged data are not.
//   - Deletions are not mirrored: each appliance applies its own
//     retention, and a policy does not bring back a replica deleted here.
//
// # Caveats
//
// The list of missing blocks is held in memory (32 bytes each, sorted),
// and each disk's map is kept in a scratch file of 32 bytes per block
// under the data dir while it is copied. A replica's server id is the
// source's, so no local server's policy retention touches replicas; they
// stay until deleted.
package replication
