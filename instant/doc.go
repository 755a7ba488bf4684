// Package instant runs the lifecycle of instant restores: a writable
// NBD export per disk that a VM can use at once, hydrated in the
// background into the restore's targets (package hydrate does the
// copy-on-write device and the hydrator; this package decides when they
// start, stop and what the catalog records).
//
// # States
//
//	start ──► running ◄──resume── paused
//	            │  └────pause────►  │
//	            ▼ (hydration ends)  │
//	 complete ◄─┴───────────────────┘ (a paused restore completes once resumed)
//	    │
//	 finish ──► succeeded      cancel (from running, paused, complete) ──► canceled
//	 hydration error ──► failed (the exports keep serving until cancel)
//
// The exports stay up in complete: the VM keeps running on them until
// the user finishes the restore. Finish needs complete; pause and resume
// change only a running or a paused restore; cancel stops at once and
// leaves the targets holding a partial disk. Once a restore's exports
// are gone (finished, canceled, not resumed), its record names none.
//
// # The hydration job
//
// Hydration runs as a job of kind hydrate in the daemon's job runner
// (Options.Jobs; its executor calls Manager.Hydrate), so that csbs job
// ls shows its progress, csbs job wait returns when the targets are
// complete and csbs job cancel cancels the restore. The restore record
// holds the job's id (the session's copy of the restore is never written
// after it is opened: the job reads it). A paused restore's job stays
// running, waiting. The job's context tells who stopped it: a user
// (cause context.Canceled) cancels the restore; a daemon shutdown (cause
// scheduler.ErrShutdown) leaves the restore as recorded, and Recover
// resumes its hydration in a new job at the next start. A job that
// cannot be started leaves the exports serving and the restore failed.
// Shutdown expects the jobs to have ended: it closes the devices.
//
// # Recovery after a restart
//
// Recover reopens every instant restore recorded as running, paused or
// complete, with its exports under the same names, before the NBD
// listener serves; a paused one stays paused, a complete one is not
// hydrated again. Each target is opened again under the host access of
// whoever started the restore. A restore that cannot be reopened (its
// backup deleted or damaged, its target gone or no longer allowed, its
// bitmap or its journal missing or not matching the disk) is recorded as
// failed with the reason, and its target is left as it is: a new bitmap
// would copy the backup over the blocks the guest wrote.
// Restores in any other state, and normal restores, are left alone.
//
// The hydration bitmap of a disk lives in Options.Dir until the restore
// is finished or canceled. Finish removes it only after succeeded is
// recorded, so a restart in between reopens the complete restore with
// its bitmap; cancel removes it before canceled is recorded, so a
// restart in between finds the restore failed (bitmap missing), with the
// target as the cancel left it.
//
// The package reaches the catalog, the store, the NBD export registry
// and the job runner through the small interfaces Catalog, Store,
// Exports and Jobs; CatalogOf adapts a *catalog.Catalog,
// *blockstore.Store is a Store and *scheduler.Runner is Jobs.
package instant
