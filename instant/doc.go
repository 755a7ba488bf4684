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
// leaves the targets holding a partial disk.
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
// The package reaches the catalog, the store and the NBD export
// registry through the small interfaces Catalog, Store and Exports;
// CatalogOf adapts a *catalog.Catalog, and *blockstore.Store is a Store.
package instant
