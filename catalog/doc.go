// Package catalog holds the CSBS model: projects, tokens, servers and their
// disks, policies, backups, jobs and restores, and the Instant Restore
// rules that decide whether a backup is Common or Enhanced.
//
// Records are JSON values under c/<kind>/<id> in the store's own Badger
// database (no second database), so that a backup's record commits in the
// same transaction as its block maps (see blockstore.Store.Commit).
// Every lookup is scoped by project: asking for another project's object
// gives ErrNotFound, exactly as for an object that does not exist.
package catalog
