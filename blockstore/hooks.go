package blockstore

// HookPoint names one step of a concurrency protocol (ingest, commit,
// GC, scrub). Tests set Options.Hook to stop one side at a step and run
// the other side through, for every ordering; the store calls hooks
// without holding any of its locks, so a hook may call back into the
// store.
type HookPoint string

// Hook points, in the order each protocol passes them.
const (
	// Ingest: a block hash is held and looked up in the index.
	HookIngestLookup HookPoint = "ingest: block held and looked up"
	// Ingest: a pack of new blocks is durable but not yet indexed.
	HookIngestPackSealed HookPoint = "ingest: pack sealed, not indexed"
	// Ingest: a pack's blocks are indexed.
	HookIngestPackIndexed HookPoint = "ingest: pack indexed"
	// Ingest: a segment is in the map file; its holds are not yet released.
	HookIngestSegmentWritten HookPoint = "ingest: segment written, holds not released"
	// Ingest: the map file is complete and synced.
	HookIngestDone HookPoint = "ingest: done"

	// Commit: data is synced; headers are not yet written.
	HookCommitSynced HookPoint = "commit: synced, header not written"
	// Commit: headers are visible.
	HookCommitDone HookPoint = "commit: header visible"

	// GC: the marking view, pending maps and writing packs are fixed.
	HookGCSnapshot HookPoint = "gc: snapshot taken"
	// GC: about to read one map's hashes.
	HookGCMarkMap HookPoint = "gc: before marking a map"
	// GC: every live map is marked.
	HookGCMarked HookPoint = "gc: marked"
	// GC: about to delete one batch of unmarked index entries.
	HookGCSweepBatch HookPoint = "gc: before a sweep batch"
	// GC: every unmarked block is swept.
	HookGCSwept HookPoint = "gc: swept"
	// GC: about to copy a pack's live blocks to a new pack.
	HookGCRepack HookPoint = "gc: before repacking a pack"
	// GC: moved blocks point at their new pack; the old one still exists.
	HookGCRepackIndexed HookPoint = "gc: repack indexed, old pack not deleted"
	// GC: about to delete a pack that holds no live block.
	HookGCDeletePack HookPoint = "gc: before deleting a pack"
	// GC: about to delete packs and map files that nothing refers to.
	HookGCOrphans HookPoint = "gc: before deleting orphans"

	// Scrub: the view whose blocks are verified is fixed.
	HookScrubSnapshot HookPoint = "scrub: snapshot taken"
	// Scrub: every block is verified; damaged ones are not yet removed.
	HookScrubVerified HookPoint = "scrub: verified"
	// Scrub: about to check which maps refer to damaged or missing blocks.
	HookScrubMaps HookPoint = "scrub: before checking maps"
)

func (s *Store) hook(p HookPoint) {
	if s.opts.Hook != nil {
		s.opts.Hook(p)
	}
}
