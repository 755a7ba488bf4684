package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"csbs/blockstore"
	"csbs/catalog"
)

// executor runs jobs for the scheduler's Runner.
type executor struct{ d *Daemon }

func (e executor) Execute(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	started := e.d.clock.Now()
	if !j.Scheduled.IsZero() {
		e.d.metrics.SchedulerLag.Observe(max(started.Sub(j.Scheduled).Seconds(), 0))
	}
	var total atomic.Int64
	// Every pack store request the job makes is counted in its record.
	var ioc blockstore.IOCounter
	ctx = blockstore.WithIOCounter(ctx, &ioc)
	out, err := e.execute(ctx, j, func(done, t int64) { total.Store(t); progress(done, t) })
	if st := ioc.Stats(); st != (blockstore.IOStats{}) {
		out.StoreIO = &catalog.JobIO{Puts: st.Puts, PutBytes: st.PutBytes, Gets: st.Gets, GetBytes: st.GetBytes}
	}
	var b *catalog.Backup
	if j.Kind == catalog.JobBackup && err == nil {
		_ = e.d.cat.View(func(tx *catalog.Txn) error {
			x, err := tx.Backup(out.Project, out.BackupID)
			b = &x
			return err
		})
	}
	e.d.observeJob(out, err, started, total.Load(), b)
	return out, err
}

func (e executor) execute(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	switch j.Kind {
	case catalog.JobBackup:
		return e.backup(ctx, j, progress)
	case catalog.JobRestore:
		return j, e.restore(ctx, j, progress)
	case catalog.JobGC:
		return e.gc(ctx, j)
	case catalog.JobScrub:
		return e.scrub(ctx, j, progress)
	case catalog.JobReplicate:
		return e.d.repl.Execute(ctx, j, progress)
	case catalog.JobHydrate:
		return e.d.serving.instant.Hydrate(ctx, j, progress)
	case catalog.JobRebuildIndex:
		return e.rebuildIndex(ctx, j)
	}
	return j, fmt.Errorf("job kind %q cannot run", j.Kind)
}

func (e executor) backup(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	b, err := e.d.engine.Backup(ctx, j, progress)
	if err != nil {
		return j, err
	}
	j.BackupID = b.ID
	j.BackupName = b.Name
	j.Note = joinNote(j.Note, b.Note)
	if b.Trigger == catalog.TriggerAuto && j.PolicyID != "" {
		deleted, err := e.d.sched.ApplyRetention(ctx, j.Project, j.PolicyID, j.ServerID)
		switch {
		case err != nil:
			j.Note = joinNote(j.Note, "retention failed: "+err.Error())
		case len(deleted) > 0:
			names := ""
			for i, it := range deleted {
				if i > 0 {
					names += ", "
				}
				names += it.Name
			}
			j.Note = joinNote(j.Note, fmt.Sprintf("retention deleted %d backup(s): %s", len(deleted), names))
		}
	}
	return j, nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func (e executor) restore(ctx context.Context, j catalog.Job, progress func(done, total int64)) error {
	var r catalog.Restore
	if err := e.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Restore(j.Project, j.RestoreID)
		return err
	}); err != nil {
		return err
	}
	runErr := e.d.engine.RestoreTargets(ctx, r, func(done, total int64) {
		progress(done, total)
	})
	err := e.d.cat.Release(func(tx *catalog.Txn) error {
		cur, err := tx.Restore(j.Project, j.RestoreID)
		if err != nil {
			return err
		}
		cur.Ended = e.d.clock.Now().UTC()
		switch {
		case runErr == nil:
			cur.State, cur.Done = catalog.RestoreSucceeded, cur.Total
		case errors.Is(runErr, context.Canceled):
			cur.State, cur.Error = catalog.RestoreCanceled, "canceled"
		default:
			cur.State, cur.Error = catalog.RestoreFailed, runErr.Error()
		}
		return tx.PutRestore(cur)
	})
	return errors.Join(runErr, err)
}
