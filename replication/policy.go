package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"csbs/catalog"
	"csbs/remote"
	"csbs/scheduler"
)

// runPolicy replicates, one after another, the newest Last qualifying
// backups of each server (or of the policy's server) that are not here
// yet, oldest first, so that each can send its map as differences to
// the one before.
func (s *Service) runPolicy(ctx context.Context, tr *tracker) error {
	rj := tr.job.Replicate
	var (
		rep catalog.Replication
		r   catalog.Remote
	)
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		if rep, err = tx.Replication(tr.job.Project, rj.ReplicationID); err != nil {
			return err
		}
		r, err = tx.Remote(rep.Project, rep.RemoteID)
		return err
	}); err != nil {
		return err
	}
	c, err := s.connect(ctx, tr, r, rj.Rate)
	if err != nil {
		return err
	}
	defer c.Close()
	var all []remote.BackupInfo
	if err := s.retry(ctx, func() error {
		var err error
		all, err = c.Backups(ctx, rep.Server)
		return err
	}); err != nil {
		return remoteErr(r.Name, err)
	}
	var done, here, busy, failed []string
	var errs []error
	for _, b := range Choose(all, rep.Last) {
		stateID := catalog.ReplicaStateID(r.ID, b.ID)
		if err := s.claim(stateID, tr.job.ID); err != nil {
			busy = append(busy, b.Name)
			continue
		}
		_, err := s.replicate(ctx, tr, r, c, b, true)
		s.release(stateID)
		switch {
		case err == nil:
			done = append(done, b.Name)
		case errors.Is(err, errReplicated):
			here = append(here, b.Name)
		case ctx.Err() != nil:
			return err
		default:
			failed = append(failed, b.Name)
			errs = append(errs, fmt.Errorf("backup %s: %w", b.Name, err))
		}
	}
	pruned, kept, err := s.prune(ctx, rep, r)
	if err != nil {
		errs = append(errs, err)
	}
	tr.mu.Lock()
	note := fmt.Sprintf("replication %s from remote %s: %d replicated", rep.Name, r.Name, len(done))
	if len(done) > 0 {
		note += " (" + joinNames(done) + ")"
	}
	note += fmt.Sprintf(", %d here already", len(here))
	if len(busy) > 0 {
		note += fmt.Sprintf(", %d being replicated by other jobs (%s)", len(busy), joinNames(busy))
	}
	if len(failed) > 0 {
		note += fmt.Sprintf(", %d failed (%s)", len(failed), joinNames(failed))
	}
	if len(pruned) > 0 {
		note += fmt.Sprintf(", %d older replicas deleted (--keep %d: %s)", len(pruned), rep.Keep, joinNames(pruned))
	}
	if len(kept) > 0 {
		note += fmt.Sprintf(", %d older replicas kept (%s)", len(kept), strings.Join(kept, ", "))
	}
	tr.job.Note = joinNote(tr.job.Note, note+"; "+tr.summaryLocked())
	tr.mu.Unlock()
	return errors.Join(errs...)
}

// prune deletes the replicas from remote r beyond the newest rep.Keep of
// each of the remote's servers (rep.Server's only, when set). A protected
// replica or one in use stays (kept says which and why); the next run
// tries again.
func (s *Service) prune(ctx context.Context, rep catalog.Replication, r catalog.Remote) (pruned, kept []string, err error) {
	if rep.Keep <= 0 || s.DeleteBackup == nil {
		return nil, nil, nil
	}
	var bs []catalog.Backup
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		bs, err = tx.Backups(rep.Project, catalog.BackupFilter{})
		return err
	}); err != nil {
		return nil, nil, err
	}
	seen := map[string]int{} // replicas per source server, newest first
	for _, b := range bs {
		o := b.Replica
		if o == nil || o.RemoteID != r.ID || rep.Server != "" && rep.Server != o.SourceServerID && rep.Server != b.ServerName {
			continue
		}
		seen[o.SourceServerID]++
		if seen[o.SourceServerID] <= rep.Keep {
			continue
		}
		err := s.DeleteBackup(ctx, b)
		switch {
		case err == nil:
			pruned = append(pruned, b.Name)
			s.log.Info("replication deleted an older replica", "replication", rep.Name, "backup", b.Name, "keep", rep.Keep)
		case errors.Is(err, scheduler.ErrProtected):
			kept = append(kept, b.Name+": protected")
		case errors.Is(err, scheduler.ErrBackupInUse):
			kept = append(kept, b.Name+": in use")
		default:
			return pruned, kept, fmt.Errorf("delete older replica %s: %w", b.Name, err)
		}
	}
	return pruned, kept, nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// Choose picks what a replication policy copies from a remote's backup
// list (newest first): per server, the newest last backups that qualify
// (complete, undamaged, not replicas), returned oldest first.
func Choose(backups []remote.BackupInfo, last int) []remote.BackupInfo {
	per := map[string]int{}
	var out []remote.BackupInfo
	for _, b := range backups {
		if b.Qualifies() != nil || per[b.ServerID] >= last {
			continue
		}
		per[b.ServerID]++
		out = append(out, b)
	}
	slices.SortStableFunc(out, func(a, b remote.BackupInfo) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// NextRuns returns a replication policy's next n run times.
func NextRuns(rep catalog.Replication, from time.Time, n int) ([]time.Time, error) {
	return scheduler.NextRuns(rep.Schedule(), from, n)
}

// Run starts the replication policies at their times until ctx ends.
// Like backup policies: a changed schedule starts from now, runs missed
// while the daemon was down run once at start, a disabled policy runs
// only by hand.
func (s *Service) Run(ctx context.Context) {
	started := s.clock.Now()
	scheduler.Loop(ctx, s.clock, s.poke, s.log, "replication scheduler", func() (time.Time, error) { return s.tick(started) })
}

func scheduleFingerprint(r catalog.Replication) string {
	return fmt.Sprintf("replication|%v|%s|%s|%d|%s|%s", r.Enabled, strings.Join(r.Times, ","), r.Period, r.EveryN, strings.Join(r.Weekdays, ","), r.Timezone)
}

func (s *Service) tick(started time.Time) (time.Time, error) {
	now := s.clock.Now()
	var reps []catalog.Replication
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		reps, err = tx.AllReplications()
		return err
	}); err != nil {
		return time.Time{}, err
	}
	var earliest time.Time
	for _, rep := range reps {
		next, err := s.tickOne(rep, now, started)
		if err != nil {
			s.log.Error("schedule replication", "replication", rep.Name, "err", err)
			continue
		}
		if !next.IsZero() && (earliest.IsZero() || next.Before(earliest)) {
			earliest = next
		}
	}
	return earliest, nil
}

func (s *Service) tickOne(rep catalog.Replication, now, started time.Time) (time.Time, error) {
	var st catalog.SchedState
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		st, err = tx.SchedState(rep.ID)
		return err
	}); err != nil {
		return time.Time{}, err
	}
	sc := scheduler.Schedule{
		Fingerprint: scheduleFingerprint(rep), Created: rep.Created, Enabled: rep.Enabled,
		Runs: func(from time.Time, n int) ([]time.Time, error) { return NextRuns(rep, from, n) },
	}
	put := func(st catalog.SchedState) error {
		return s.cat.Update(func(tx *catalog.Txn) error { return tx.PutSchedState(st) })
	}
	d, err := sc.Tick(st, now, started, put)
	if err != nil || d.Slot.IsZero() {
		return d.Next, err
	}
	j, err := s.RunPolicy(rep, d.Note)
	if errors.Is(err, catalog.ErrConflict) {
		s.log.Warn("replication run skipped: the previous run is still going", "replication", rep.Name, "err", err)
	} else if err != nil {
		return time.Time{}, err
	} else {
		s.log.Info("replication run", "replication", rep.Name, "job", j.ID, "note", d.Note)
	}
	return d.Next, nil
}
