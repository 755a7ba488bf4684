package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/kv"
	"csbs/remote"
)

// Execute runs a replication job: one remote backup, or a run of a
// replication policy. The daemon's job executor calls it.
func (s *Service) Execute(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	rj := j.Replicate
	if rj == nil {
		return j, fmt.Errorf("job %s has no replication request", j.ID)
	}
	tr := s.newTracker(j, progress)
	defer tr.stop()
	var err error
	if rj.ReplicationID != "" {
		defer func() {
			s.mu.Lock()
			delete(s.runs, rj.ReplicationID)
			s.mu.Unlock()
		}()
		err = s.runPolicy(ctx, tr)
	} else {
		stateID := catalog.ReplicaStateID(rj.RemoteID, rj.SourceBackupID)
		if err := s.claim(stateID, j.ID); err != nil {
			return j, err
		}
		defer s.release(stateID)
		err = s.runOne(ctx, tr)
	}
	return tr.final(), err
}

// runOne replicates the job's one remote backup.
func (s *Service) runOne(ctx context.Context, tr *tracker) error {
	rj := tr.job.Replicate
	var r catalog.Remote
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Remote(tr.job.Project, rj.RemoteID)
		return err
	}); err != nil {
		return err
	}
	c, err := s.connect(ctx, tr, r, rj.Rate)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := s.remoteBackup(ctx, r, c, rj.SourceBackupID)
	if err != nil {
		return err
	}
	bk, err := s.replicate(ctx, tr, r, c, b, false)
	if err != nil {
		return err
	}
	tr.mu.Lock()
	tr.job.BackupID, tr.job.BackupName = bk.ID, bk.Name
	tr.job.Note = fmt.Sprintf("replicated backup %s of remote %s: %s", b.Name, r.Name, tr.summaryLocked())
	tr.mu.Unlock()
	return nil
}

// remoteBackup reads a remote backup that must qualify, with retries.
func (s *Service) remoteBackup(ctx context.Context, r catalog.Remote, c *remote.Client, ref string) (remote.BackupInfo, error) {
	var b remote.BackupInfo
	err := s.retry(ctx, func() error {
		var err error
		b, err = c.Backup(ctx, ref)
		return err
	})
	if err != nil {
		return b, remoteErr(r.Name, err)
	}
	if err := b.Qualifies(); err != nil {
		return b, fmt.Errorf("%w: remote %s: %v", catalog.ErrConflict, r.Name, err)
	}
	return b, nil
}

// retry runs fn until it succeeds, fails permanently or has failed
// s.Retries times, waiting s.Backoff (doubling) in between.
func (s *Service) retry(ctx context.Context, fn func() error) error {
	wait := s.Backoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !remote.Transient(err) || attempt >= s.Retries {
			return err
		}
		s.log.Warn("replication: retrying after a transient failure", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// errReplicated means the backup is replicated here already.
var errReplicated = errors.New("replicated already")

// replicate copies one remote backup into the store and commits it as a
// replica, going on from what an earlier run left (its staged maps). In
// a policy run (skipDone), a backup replicated before is left alone even
// if its replica was deleted here since: deletions are not undone.
func (s *Service) replicate(ctx context.Context, tr *tracker, r catalog.Remote, c *remote.Client, b remote.BackupInfo, skipDone bool) (catalog.Backup, error) {
	var st catalog.ReplicaState
	err := s.cat.Update(func(tx *catalog.Txn) error {
		var err error
		if st, err = tx.ReplicaState(r.Project, r.ID, b.ID); err != nil {
			return err
		}
		if st.State == catalog.ReplicaOK {
			if _, err := tx.Backup(r.Project, st.BackupID); err == nil || skipDone {
				return errReplicated
			}
			st.BackupID = ""
		}
		st.SourceBackupName, st.SourceServerName = b.Name, b.ServerName
		st.State, st.Error, st.JobID = catalog.ReplicaRunning, "", tr.job.ID
		st.Started, st.Ended = s.clock.Now().UTC(), time.Time{}
		return tx.PutReplicaState(st)
	})
	if err != nil {
		return catalog.Backup{}, err
	}
	x := &transfer{s: s, tr: tr, r: r, c: c, b: b, st: st}
	tr.begin(st)
	bk, runErr := x.run(ctx)
	c2 := tr.counters()
	tr.end()
	if runErr == nil {
		s.log.Info("replicated", "remote", r.Name, "backup", b.Name, "replica", bk.ID)
		return bk, nil
	}
	drop := gone(runErr)
	uerr := s.cat.Update(func(tx *catalog.Txn) error {
		cur, err := tx.ReplicaState(r.Project, r.ID, b.ID)
		if err != nil {
			return err
		}
		cur.State, cur.Error, cur.Ended = catalog.ReplicaFailed, runErr.Error(), s.clock.Now().UTC()
		cur.BlocksFetched, cur.BlocksSkipped, cur.WireBytes = c2.fetched, c2.skipped, c2.wire
		if errors.Is(runErr, context.Canceled) {
			cur.Error = "canceled (run it again to go on; blocks that arrived are kept)"
		}
		cur.Imports = x.st.Imports
		if drop {
			cur.Imports = nil
		}
		return tx.PutReplicaState(cur)
	})
	if drop {
		s.dropImports(ctx, x.st)
	}
	return catalog.Backup{}, errors.Join(runErr, uerr)
}

// gone reports whether a replication cannot go on from where it stopped:
// the backup is gone from the remote or no longer qualifies, or its
// replica cannot be recorded. Its staged maps are then dropped; after
// any other failure they stay for the next run.
func gone(err error) bool {
	var ae *remote.APIError
	return errors.Is(err, catalog.ErrNotFound) || errors.Is(err, catalog.ErrConflict) ||
		(errors.As(err, &ae) && (ae.NotFound() || ae.Status == 409))
}

// transfer is one remote backup being replicated.
type transfer struct {
	s     *Service
	tr    *tracker
	r     catalog.Remote
	c     *remote.Client
	b     remote.BackupInfo
	st    catalog.ReplicaState
	disks []*diskTransfer
	base  *catalog.Backup // the newest replica of an earlier backup of the same server
}

type diskTransfer struct {
	index    int
	name     string
	size     int64
	im       *blockstore.Import
	scratch  string
	nblocks  int64
	data     int64             // blocks with data in the map
	missing  []blockstore.Hash // sorted, distinct
	newBytes atomic.Int64
}

func (x *transfer) run(ctx context.Context) (catalog.Backup, error) {
	s := x.s
	if err := os.MkdirAll(s.scratchDir(x.st.ID), 0o700); err != nil {
		return catalog.Backup{}, fmt.Errorf("replication scratch dir: %w", err)
	}
	if err := x.openImports(ctx); err != nil {
		return catalog.Backup{}, err
	}
	x.base = x.findBase()
	for _, d := range x.disks {
		if err := x.fetchMap(ctx, d); err != nil {
			return catalog.Backup{}, fmt.Errorf("backup %s of remote %s, disk %s: %w", x.b.Name, x.r.Name, d.name, err)
		}
	}
	for _, d := range x.disks {
		if err := x.findMissing(ctx, d); err != nil {
			return catalog.Backup{}, fmt.Errorf("backup %s disk %s: %w", x.b.Name, d.name, err)
		}
	}
	for _, d := range x.disks {
		if err := x.fetchBlocks(ctx, d); err != nil {
			return catalog.Backup{}, fmt.Errorf("backup %s of remote %s, disk %s: %w", x.b.Name, x.r.Name, d.name, err)
		}
	}
	return x.commit(ctx)
}

// openImports resumes the staged maps of an earlier run or begins new
// ones, recording each before anything is written into it: a map the
// catalog does not name would hold its blocks from GC forever.
func (x *transfer) openImports(ctx context.Context) error {
	s := x.s
	have := map[string]catalog.ReplicaImport{}
	for _, im := range x.st.Imports {
		have[im.Disk] = im
	}
	var imports []catalog.ReplicaImport
	for i, d := range x.b.Disks {
		dt := &diskTransfer{index: i, name: d.Name, size: d.Size, nblocks: blocksFor(d.Size, s.store.BlockSize()),
			scratch: filepath.Join(s.scratchDir(x.st.ID), d.Name+".hashes")}
		if prev, ok := have[d.Name]; ok {
			im, err := s.resumeImport(ctx, prev.MapID)
			if err == nil {
				dt.im = im
			} else {
				s.log.Warn("replication: staged map of an earlier run is unusable; starting the disk again", "backup", x.b.Name, "disk", d.Name, "map", prev.MapID, "err", err)
			}
		}
		if dt.im == nil {
			im, err := s.store.BeginImport(ctx, d.Size)
			if err != nil {
				return fmt.Errorf("backup %s disk %s: %w", x.b.Name, d.Name, err)
			}
			s.keepImport(im)
			dt.im = im
		}
		x.disks = append(x.disks, dt)
		imports = append(imports, catalog.ReplicaImport{Disk: d.Name, MapID: dt.im.ID().String()})
	}
	x.st.Imports = imports
	return s.cat.Update(func(tx *catalog.Txn) error {
		cur, err := tx.ReplicaState(x.r.Project, x.r.ID, x.b.ID)
		if err != nil {
			return err
		}
		cur.Imports = imports
		return tx.PutReplicaState(cur)
	})
}

func blocksFor(size int64, bs int) int64 { return (size + int64(bs) - 1) / int64(bs) }

// findBase picks the newest replica here of an earlier backup of the
// same source server from the same remote: the remote then sends only
// the map segments that differ from it.
func (x *transfer) findBase() *catalog.Backup {
	var best *catalog.Backup
	_ = x.s.cat.View(func(tx *catalog.Txn) error {
		bs, err := tx.Backups(x.r.Project, catalog.BackupFilter{ServerID: x.b.ServerID})
		for _, b := range bs {
			o := b.Replica
			if o == nil || o.RemoteID != x.r.ID || o.SourceBackupID == x.b.ID || b.Status != catalog.StatusAvailable || b.Damaged {
				continue
			}
			if best == nil || b.Created.After(best.Created) {
				b := b
				best = &b
			}
		}
		return err
	})
	return best
}

// fetchMap reads a disk's block map from the remote into the staged map
// and into a scratch file of its hashes (block i at offset 32·i), which
// finds the place of each missing block later without holding the map
// in memory. Every run fetches the map again: the staged map's file is
// synced only when it is finished, so after a crash it may lack a
// segment.
func (x *transfer) fetchMap(ctx context.Context, d *diskTransfer) error {
	s := x.s
	var baseVol *blockstore.Volume
	baseID := ""
	if x.base != nil {
		for _, bd := range x.base.Disks {
			if bd.Name != d.name {
				continue
			}
			if id, err := blockstore.ParseMapID(bd.MapID); err == nil {
				if v, err := s.store.OpenVolume(id); err == nil {
					baseVol, baseID = v, x.base.Replica.SourceBackupID
					defer v.Close()
				}
			}
		}
	}
	attempt := func(withBase bool) error {
		f, err := os.OpenFile(d.scratch, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Truncate(d.nblocks * blockstore.HashSize); err != nil {
			return err
		}
		base := ""
		if withBase {
			base = baseID
		}
		var data int64
		buf := make([]byte, 0, blockstore.SegmentEntries*blockstore.HashSize)
		h, err := x.c.Map(ctx, x.b.ID, d.name, base, func(seg int64, n int) ([]blockstore.Hash, error) {
			if baseVol == nil {
				return nil, fmt.Errorf("remote sent segment %d as the same as a base this transfer has not", seg)
			}
			out := make([]blockstore.Hash, n)
			first := seg * blockstore.SegmentEntries
			for i := range out {
				if j := first + int64(i); j < baseVol.Info().Blocks() {
					h, err := baseVol.BlockHash(j)
					if err != nil {
						return nil, fmt.Errorf("base replica map: %w", err)
					}
					out[i] = h
				}
			}
			return out, nil
		}, func(h remote.MapHeader, seg int64, hs []blockstore.Hash) error {
			if h.Size != d.size || h.BlockSize != s.store.BlockSize() {
				return fmt.Errorf("%w: map of %d bytes in %d-byte blocks, want %d bytes in %d-byte blocks", remote.ErrBadStream, h.Size, h.BlockSize, d.size, s.store.BlockSize())
			}
			if err := d.im.WriteSegment(seg, hs); err != nil {
				return err
			}
			buf = buf[:0]
			for i := range hs {
				buf = append(buf, hs[i][:]...)
				if !hs[i].IsZero() {
					data++
				}
			}
			_, err := f.WriteAt(buf, seg*blockstore.SegmentEntries*blockstore.HashSize)
			return err
		})
		if err != nil {
			return err
		}
		if h.Size != d.size {
			return fmt.Errorf("%w: map of %d bytes, want %d", remote.ErrBadStream, h.Size, d.size)
		}
		d.data = data
		return nil
	}
	withBase := baseVol != nil
	err := s.retry(ctx, func() error {
		err := attempt(withBase)
		if errors.Is(err, remote.ErrBaseMismatch) {
			s.log.Warn("replication: the local base replica differs from the remote's backup; fetching the whole map", "backup", x.b.Name, "base", x.base.Name)
			withBase = false
			err = attempt(false)
		}
		return err
	})
	if err != nil {
		return remoteErr(x.r.Name, err)
	}
	return nil
}

// findMissing lists the distinct blocks of a disk the store lacks.
func (x *transfer) findMissing(ctx context.Context, d *diskTransfer) error {
	var missing []blockstore.Hash
	if err := d.im.EachMissing(ctx, func(h blockstore.Hash) error {
		missing = append(missing, h)
		return nil
	}); err != nil {
		return err
	}
	slices.SortFunc(missing, func(a, b blockstore.Hash) int { return bytes.Compare(a[:], b[:]) })
	d.missing = slices.Compact(missing)
	x.tr.addDisk(d.data, int64(len(d.missing)), int64(x.s.store.BlockSize()))
	return nil
}

// fetchBlocks fetches a disk's missing blocks in batches, several
// requests in flight, in disk order. One goroutine stores what arrives
// (an Import is used by one goroutine), taking whatever batches queued
// up while it stored the last into one PutBlocks, so that the requests
// keep the wire busy while a pack is synced, and slow syncs cost fewer
// of them.
func (x *transfer) fetchBlocks(ctx context.Context, d *diskTransfer) error {
	if len(d.missing) == 0 {
		return nil
	}
	s := x.s
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	puts := make(chan arrived, max(1, s.Inflight/2))
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		for a := range puts {
			if err := x.store(ctx, d, a, puts); err != nil {
				cancel(err)
				for range puts { // let the fetchers finish
				}
				return
			}
		}
	}()
	batches := make(chan []remote.BlockRef, s.Inflight)
	var wg sync.WaitGroup
	for range max(1, s.Inflight) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for refs := range batches {
				if err := x.fetchBatch(ctx, refs, puts); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	err := x.scan(ctx, d, func(refs []remote.BlockRef) error {
		select {
		case batches <- refs:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	close(batches)
	wg.Wait()
	close(puts)
	<-stored
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

// arrived is blocks received, not yet stored.
type arrived struct {
	blocks []blockstore.BlockValue
	bytes  int64
}

// maxPut bounds the bytes of one PutBlocks made of queued batches.
const maxPut = 16 << 20

// store stores a, together with the batches queued behind it.
func (x *transfer) store(ctx context.Context, d *diskTransfer, a arrived, queue <-chan arrived) error {
more:
	for a.bytes < maxPut {
		select {
		case b, ok := <-queue:
			if !ok {
				break more
			}
			a.blocks, a.bytes = append(a.blocks, b.blocks...), a.bytes+b.bytes
		default:
			break more
		}
	}
	if err := d.im.PutBlocks(ctx, a.blocks); err != nil {
		var ce *blockstore.CorruptBlockError
		if errors.As(err, &ce) {
			return fmt.Errorf("the remote sent block %s that does not verify: %w", ce.Hash, err)
		}
		return err
	}
	d.newBytes.Add(a.bytes)
	x.tr.fetched(int64(len(a.blocks)), int64(x.s.store.BlockSize()))
	return nil
}

// scan walks the scratch file of a disk's hashes and hands out, in
// batches, the first place of every missing block.
func (x *transfer) scan(ctx context.Context, d *diskTransfer, emit func([]remote.BlockRef) error) error {
	f, err := os.Open(d.scratch)
	if err != nil {
		return err
	}
	defer f.Close()
	found := make([]bool, len(d.missing))
	left := len(d.missing)
	batch := min(max(1, x.s.Batch), remote.MaxBatch)
	var refs []remote.BlockRef
	buf := make([]byte, 32768*blockstore.HashSize)
	for off := int64(0); off < d.nblocks*blockstore.HashSize && left > 0; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for p := 0; p+blockstore.HashSize <= n; p += blockstore.HashSize {
			var h blockstore.Hash
			copy(h[:], buf[p:])
			if h.IsZero() {
				continue
			}
			i, ok := slices.BinarySearchFunc(d.missing, h, func(a, b blockstore.Hash) int { return bytes.Compare(a[:], b[:]) })
			if !ok || found[i] {
				continue
			}
			found[i] = true
			left--
			refs = append(refs, remote.BlockRef{Disk: d.index, Index: (off + int64(p)) / blockstore.HashSize, Hash: h})
			if len(refs) == batch {
				if err := emit(refs); err != nil {
					return err
				}
				refs = nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if len(refs) > 0 {
		if err := emit(refs); err != nil {
			return err
		}
	}
	if left > 0 {
		return fmt.Errorf("%d missing blocks are not in the map fetched for disk %s", left, d.name)
	}
	return nil
}

// fetchBatch fetches one batch and hands it to the storing goroutine.
// What arrived before a broken connection is handed on, and only the
// rest is asked for again.
func (x *transfer) fetchBatch(ctx context.Context, refs []remote.BlockRef, puts chan<- arrived) error {
	maxValue := x.s.store.BlockSize() + 64<<10
	return x.s.retry(ctx, func() error {
		var a arrived
		err := x.c.Blocks(ctx, x.b.ID, refs, maxValue, func(i int, v []byte) error {
			a.blocks = append(a.blocks, blockstore.BlockValue{Hash: refs[i].Hash, Value: v})
			a.bytes += int64(len(v))
			return nil
		})
		if len(a.blocks) > 0 {
			select {
			case puts <- a:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			refs = refs[len(a.blocks):]
		}
		if err != nil {
			return remoteErr(x.r.Name, err)
		}
		return nil
	})
}

// commit finishes the staged maps and makes the replica visible: its
// maps and its catalog record (name, type, creation time and region of
// the source backup, marked as a replica) in one transaction.
func (x *transfer) commit(ctx context.Context) (catalog.Backup, error) {
	s := x.s
	var pms []*blockstore.PendingMap
	for _, d := range x.disks {
		pm, err := d.im.Finish(ctx)
		if err != nil {
			return catalog.Backup{}, fmt.Errorf("backup %s disk %s: %w", x.b.Name, d.name, err)
		}
		s.forgetImport(d.im.ID())
		pms = append(pms, pm)
	}
	reason := fmt.Sprintf("replica of backup %s (%s) of remote %s, region %s; it keeps the source backup's type", x.b.Name, x.b.ID, x.r.Name, x.b.Region)
	if x.b.TypeReason != "" {
		reason += " (there: " + x.b.TypeReason + ")"
	}
	now := s.clock.Now().UTC()
	bk := catalog.Backup{
		ID: catalog.NewID(catalog.KindBackup), Project: x.r.Project, ServerID: x.b.ServerID, ServerName: x.b.ServerName,
		Name: x.b.Name, Created: x.b.Created, Status: catalog.StatusAvailable, Type: x.b.Type, TypeReason: reason,
		Trigger: x.b.Trigger, Full: x.b.Full,
		Replica: &catalog.ReplicaOrigin{
			RemoteID: x.r.ID, RemoteName: x.r.Name, SourceBackupID: x.b.ID, SourceServerID: x.b.ServerID,
			SourceRegion: x.b.Region, SourceProject: x.r.RemoteProject, Replicated: now,
		},
	}
	for i, d := range x.disks {
		bk.Disks = append(bk.Disks, catalog.BackupDisk{
			Name: d.name, MapID: pms[i].Info.ID.String(), Size: pms[i].Info.Size,
			NewBytes: d.newBytes.Load(), Blocks: pms[i].Info.Stats.DataBlocks,
		})
	}
	c := x.tr.counters()
	x.st.BlocksFetched, x.st.BlocksSkipped, x.st.WireBytes = c.fetched, c.skipped, c.wire
	err := s.store.Commit(ctx, pms, func(txn *kv.Txn) error {
		tx := catalog.Wrap(txn)
		// A replica keeps its source's server id; one that is a server
		// of this appliance (ids are random: only a hostile remote sends
		// one) would slip the replica into that server's listings.
		if _, err := tx.Server(bk.Project, bk.ServerID); err == nil {
			return fmt.Errorf("%w: remote %s says backup %s is of server %s, which is a server of this appliance; refused", catalog.ErrConflict, x.r.Name, x.b.Name, bk.ServerID)
		} else if !errors.Is(err, catalog.ErrNotFound) {
			return err
		}
		taken, err := tx.BackupNameTaken(bk.Project, bk.ServerID, bk.Name)
		if err != nil {
			return err
		}
		if taken {
			return fmt.Errorf("%w: a backup of server %s named %s exists here already (another replica of it?); delete it to replicate this one", catalog.ErrConflict, bk.ServerName, bk.Name)
		}
		if err := tx.PutBackup(bk); err != nil {
			return err
		}
		st := x.st
		st.State, st.Error, st.BackupID, st.Imports, st.Ended = catalog.ReplicaOK, "", bk.ID, nil, now
		return tx.PutReplicaState(st)
	})
	if err != nil {
		if errors.Is(err, catalog.ErrConflict) {
			for _, pm := range pms {
				if aerr := s.store.AbortImport(context.WithoutCancel(ctx), pm.Info.ID); aerr != nil {
					s.log.Warn("drop the staged map of a replication", "map", pm.Info.ID, "err", aerr)
				}
			}
		}
		return catalog.Backup{}, err
	}
	os.RemoveAll(s.scratchDir(x.st.ID))
	return bk, nil
}

// resumeImport returns the open import of an earlier run of this daemon
// or reopens a staged map after a restart.
func (s *Service) resumeImport(ctx context.Context, mapID string) (*blockstore.Import, error) {
	id, err := blockstore.ParseMapID(mapID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	im, ok := s.open[id]
	s.mu.Unlock()
	if ok {
		return im, nil
	}
	im, err = s.store.ResumeImport(ctx, id)
	if err != nil {
		return nil, err
	}
	s.keepImport(im)
	return im, nil
}

// keepImport remembers an open import: the store lets one open handle
// exist per staged map, and a failed run leaves it open for the next.
func (s *Service) keepImport(im *blockstore.Import) {
	s.mu.Lock()
	s.open[im.ID()] = im
	s.mu.Unlock()
}

func (s *Service) forgetImport(id blockstore.MapID) {
	s.mu.Lock()
	delete(s.open, id)
	s.mu.Unlock()
}

// tracker keeps a replication job's progress and writes it to the job
// record and to the replica state of the backup being replicated every
// second, so that job show and backup ls --remote show it while the job
// runs.
type tracker struct {
	s        *Service
	progress func(done, total int64)
	mu       sync.Mutex
	job      catalog.Job
	client   *remote.Client
	wireBase int64 // wire bytes of clients closed before this one
	cur      *stateRef
	total    int64 // bytes to fetch (missing blocks × block size)
	done     chan struct{}
	wg       sync.WaitGroup
}

// stateRef is the replica state the tracker writes to, with the job's
// counters when that backup began.
type stateRef struct {
	project, remoteID, sourceBackupID string
	prior                             counters // the state's own, from earlier runs
	fetched, skipped, wire            int64    // the job's, when this backup began
}

// counters are one backup's replication figures.
type counters struct{ fetched, skipped, wire int64 }

func (s *Service) newTracker(j catalog.Job, progress func(done, total int64)) *tracker {
	rj := *j.Replicate
	j.Replicate = &rj
	t := &tracker{s: s, job: j, progress: progress, done: make(chan struct{})}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-t.done:
				return
			case <-tick.C:
				t.flush()
			}
		}
	}()
	return t
}

func (t *tracker) setClient(c *remote.Client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client != nil {
		t.wireBase += t.client.WireBytes()
	}
	t.client = c
}

func (t *tracker) wireLocked() int64 {
	w := t.wireBase
	if t.client != nil {
		w += t.client.WireBytes()
	}
	return w
}

// begin points the tracker at the replica state of the backup being
// replicated; end detaches it.
func (t *tracker) begin(st catalog.ReplicaState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rj := t.job.Replicate
	t.cur = &stateRef{
		project: st.Project, remoteID: st.RemoteID, sourceBackupID: st.SourceBackupID,
		prior:   counters{fetched: st.BlocksFetched, wire: st.WireBytes},
		fetched: rj.BlocksFetched, skipped: rj.BlocksSkipped, wire: t.wireLocked(),
	}
}

func (t *tracker) end() {
	t.mu.Lock()
	t.cur = nil
	t.mu.Unlock()
}

// counters returns the figures of the backup being replicated: blocks
// fetched and bytes on the wire over all its runs, blocks skipped in
// this one.
func (t *tracker) counters() counters {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.countersLocked()
}

func (t *tracker) countersLocked() counters {
	if t.cur == nil {
		return counters{}
	}
	rj := t.job.Replicate
	return counters{
		fetched: t.cur.prior.fetched + rj.BlocksFetched - t.cur.fetched,
		skipped: rj.BlocksSkipped - t.cur.skipped,
		wire:    t.cur.prior.wire + t.wireLocked() - t.cur.wire,
	}
}

func (t *tracker) addDisk(data, missing, bs int64) {
	t.mu.Lock()
	rj := t.job.Replicate
	rj.DataBlocks += data
	rj.BlocksSkipped += data - missing
	t.total += missing * bs
	done := t.doneLocked(bs)
	total := t.total
	t.mu.Unlock()
	t.progress(done, total)
}

func (t *tracker) doneLocked(bs int64) int64 {
	f := t.job.Replicate.BlocksFetched
	if t.cur != nil {
		f -= t.cur.fetched
	}
	return min(f*bs, t.total)
}

func (t *tracker) fetched(n, bs int64) {
	t.mu.Lock()
	t.job.Replicate.BlocksFetched += n
	done, total := t.doneLocked(bs), t.total
	t.mu.Unlock()
	t.progress(done, total)
}

// flush writes the progress to the job record and the replica state.
func (t *tracker) flush() {
	t.mu.Lock()
	t.job.Replicate.WireBytes = t.wireLocked()
	j := t.job
	rj := *j.Replicate
	j.Replicate = &rj
	var ref stateRef
	var c counters
	if t.cur != nil {
		ref, c = *t.cur, t.countersLocked()
	}
	t.mu.Unlock()
	err := t.s.cat.Update(func(tx *catalog.Txn) error {
		if cur, err := tx.Job(j.Project, j.ID); err != nil || cur.Finished() {
			return err
		}
		if err := tx.PutJob(j); err != nil {
			return err
		}
		if ref.remoteID == "" {
			return nil
		}
		st, err := tx.ReplicaState(ref.project, ref.remoteID, ref.sourceBackupID)
		if err != nil || st.State != catalog.ReplicaRunning {
			return err
		}
		st.BlocksFetched, st.BlocksSkipped, st.WireBytes = c.fetched, c.skipped, c.wire
		return tx.PutReplicaState(st)
	})
	if err != nil {
		t.s.log.Warn("replication: record progress", "job", j.ID, "err", err)
	}
}

func (t *tracker) summaryLocked() string {
	rj := t.job.Replicate
	return fmt.Sprintf("%d data blocks, %d fetched, %d already here; %d bytes on the wire", rj.DataBlocks, rj.BlocksFetched, rj.BlocksSkipped, t.wireLocked())
}

func (t *tracker) stop() {
	select {
	case <-t.done:
	default:
		close(t.done)
	}
	t.wg.Wait()
}

// final returns the job with its final figures.
func (t *tracker) final() catalog.Job {
	t.stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.job.Replicate.WireBytes = t.wireLocked()
	j := t.job
	rj := *j.Replicate
	j.Replicate = &rj
	return j
}

// joinNames lists backup names for a job note.
func joinNames(names []string) string {
	if len(names) > 5 {
		return strings.Join(names[:5], ", ") + fmt.Sprintf(" and %d more", len(names)-5)
	}
	return strings.Join(names, ", ")
}
