// Package remote is the wire between two appliances for replication:
// the client a destination uses to read a source appliance's backups over
// its TLS API, the pinning of the source's certificate, and the binary
// formats of the two bulk answers (a disk's block map, a batch of stored
// block values), whose encoders the source's API handlers use.
//
// # Model
//
// The destination pulls. It holds a replication token of one project on
// the source (csbs token create --replication), which reads that
// project's backups and nothing else, and the SHA-256 fingerprint of the
// source's certificate. A connection is accepted only if the certificate
// the source presents has exactly that fingerprint; no CA is consulted.
//
// A replication reads the backup's metadata (JSON), then each disk's
// block map as a stream of segments, then asks for the blocks its own
// store lacks in batches of at most MaxBatch, each block named by its
// place in the backup so that the source can check the token may read
// it. Values travel as they lie in the source's packs (compressed, codec
// byte first) and are verified by the receiver before it stores them.
//
// # Guarantees and caveats
//
//   - Both stores must use the same block size and HashAlgorithm; the
//     destination refuses a remote that differs (blocks would never
//     match, and hashes would mean different things).
//   - A map stream may be sent as a difference to a base backup whose map
//     the destination holds (its replica of an earlier backup); every
//     segment carries a digest of its full content, so a base that
//     differs is detected (ErrBaseMismatch), never silently used.
//   - The client paces what it receives (Options.Rate) per connection
//     read, so the rate holds over any span longer than a few reads, and
//     counts every byte on its connections (WireBytes).
package remote
