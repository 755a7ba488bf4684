// Package catalog holds the CSBS model: projects, tokens, servers and their
// disks, policies, backups, jobs and restores, and the Instant Restore
// rules that decide whether a backup is Common or Enhanced.
//
// Records are JSON values under c/<kind>/<id> in the store's own Badger
// database (no second database), so that a backup's record commits in the
// same transaction as its block maps (see blockstore.Store.Commit).
// Every lookup is scoped by project: asking for another project's object
// gives ErrNotFound, exactly as for an object that does not exist.
//
// Beside the records, indexes (c/i/...) and counters (c/n/...) make every
// request cost what it touches: a lookup by name or token, a server's
// backups, a project's listing, a page of it, the FUSE tree, a project's
// backup counts and the active jobs read their own entries, not every
// record of a kind. They are written in the record's own transaction
// (index.go says what each kind contributes), Check verifies them, and
// EnsureIndexes builds them once for a catalog written before them.
// Listings page with cursors that survive deletion (Page); WatchMounts
// reports commits that change the FUSE tree.
package catalog
