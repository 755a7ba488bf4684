package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"csbs/blockstore"
	"csbs/catalog"
)

// ErrBackupInUse means a backup is being read by a restore, an NBD export
// or a FUSE mount.
var ErrBackupInUse = errors.New("in use")

// ErrProtected means a protected backup was to be deleted without force.
var ErrProtected = errors.New("protected")

// InUser tells whether a backup is in use (implemented by the engine).
type InUser interface {
	InUse(backupID string) bool
}

// Scheduler turns policies into automatic backup jobs and prunes with
// retention.
type Scheduler struct {
	cat    *catalog.Catalog
	store  *blockstore.Store
	runner *Runner
	inUse  InUser
	clock  Clock
	log    *slog.Logger

	poke    chan struct{}
	started time.Time
	mu      sync.Mutex // serialises retention and deletes

	// Jobs is how long finished jobs stay in the catalog; set it before
	// Run (zero: forever).
	Jobs JobRetention
}

// New returns a scheduler; call Run to start it.
func New(cat *catalog.Catalog, store *blockstore.Store, runner *Runner, inUse InUser, clock Clock, log *slog.Logger) *Scheduler {
	return &Scheduler{cat: cat, store: store, runner: runner, inUse: inUse, clock: clock, log: log, poke: make(chan struct{}, 1)}
}

// Poke makes the scheduler re-read policies now (after a change).
func (s *Scheduler) Poke() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Run schedules until ctx ends. It also prunes job history, at start
// and hourly.
func (s *Scheduler) Run(ctx context.Context) {
	s.started = s.clock.Now()
	nextPrune := s.started
	Loop(ctx, s.clock, s.poke, s.log, "scheduler", func() (time.Time, error) {
		if now := s.clock.Now(); !now.Before(nextPrune) {
			if n, err := PruneJobs(s.cat, s.Jobs, now); err != nil {
				s.log.Error("prune job history", "err", err)
			} else if n > 0 {
				s.log.Info("pruned job history", "jobs", n)
			}
			nextPrune = now.Add(pruneEvery)
		}
		next, err := s.tick()
		if err == nil && (next.IsZero() || nextPrune.Before(next)) {
			next = nextPrune
		}
		return next, err
	})
}

// Loop calls tick, then sleeps until the time it returns (an hour when it
// returns the zero time, a minute after an error, which it logs), until
// poke wakes it early or ctx ends. The policy and replication schedulers
// run on it.
func Loop(ctx context.Context, clock Clock, poke <-chan struct{}, log *slog.Logger, name string, tick func() (time.Time, error)) {
	for {
		next, err := tick()
		if err != nil {
			log.Error(name, "err", err)
			next = clock.Now().Add(time.Minute)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(clock.Now()), 0)
		}
		select {
		case <-ctx.Done():
			return
		case <-poke:
		case <-clock.After(wait):
		}
	}
}

func fingerprint(p catalog.Policy) string {
	return fmt.Sprintf("%v|%s|%s|%d|%s|%s", p.Enabled, strings.Join(p.Times, ","), p.Period, p.EveryN, strings.Join(p.Weekdays, ","), p.Timezone)
}

// tick fires every policy that is due and returns the earliest next run.
func (s *Scheduler) tick() (time.Time, error) {
	now := s.clock.Now()
	var policies []catalog.Policy
	err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		policies, err = tx.AllPolicies()
		return err
	})
	if err != nil {
		return time.Time{}, err
	}
	var earliest time.Time
	for _, p := range policies {
		next, err := s.tickPolicy(p, now)
		if err != nil {
			s.log.Error("schedule policy", "policy", p.ID, "err", err)
			continue
		}
		if !next.IsZero() && (earliest.IsZero() || next.Before(earliest)) {
			earliest = next
		}
	}
	return earliest, nil
}

func (s *Scheduler) tickPolicy(p catalog.Policy, now time.Time) (time.Time, error) {
	var st catalog.SchedState
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		st, err = tx.SchedState(p.ID)
		return err
	}); err != nil {
		return time.Time{}, err
	}
	sc := Schedule{
		Fingerprint: fingerprint(p), Created: p.Created, Enabled: p.Enabled,
		Runs: func(from time.Time, n int) ([]time.Time, error) { return NextRuns(p, from, n) },
	}
	d, err := sc.Tick(st, now, s.started, s.putState)
	if err != nil || d.Slot.IsZero() {
		return d.Next, err
	}
	slot := d.Slot
	if d.Note != "" {
		slot = now // a catch-up is not subject to the window of the old slot
	}
	if _, err := s.fire(p, slot, d.Note); err != nil {
		return time.Time{}, err
	}
	return d.Next, nil
}

func (s *Scheduler) putState(st catalog.SchedState) error {
	return s.cat.Release(func(tx *catalog.Txn) error { return tx.PutSchedState(st) })
}

// fire queues an automatic backup job for every server bound to p.
func (s *Scheduler) fire(p catalog.Policy, slot time.Time, note string) ([]catalog.Job, error) {
	var servers []catalog.Server
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		servers, err = tx.BoundServers(p)
		return err
	}); err != nil {
		return nil, err
	}
	var jobs []catalog.Job
	for _, sv := range servers {
		j, err := s.runner.Submit(catalog.Job{
			Project: p.Project, Kind: catalog.JobBackup, ServerID: sv.ID, PolicyID: p.ID,
			BackupID: catalog.NewID(catalog.KindBackup), Trigger: catalog.TriggerAuto,
			Scheduled: slot.UTC(), Note: note,
		})
		if err != nil && !errors.Is(err, ErrServerBusy) {
			return jobs, err
		}
		jobs = append(jobs, j)
		s.log.Info("policy run", "policy", p.Name, "server", sv.Name, "job", j.ID, "state", j.State, "note", note)
	}
	return jobs, nil
}

// RunPolicy queues an immediate automatic run of a policy (run-now); it
// works for disabled policies too.
func (s *Scheduler) RunPolicy(p catalog.Policy, why string) ([]catalog.Job, error) {
	return s.fire(p, s.clock.Now(), why)
}

// serverBackups returns one server's backups in its project.
func (s *Scheduler) serverBackups(project, serverID string) ([]catalog.Backup, error) {
	var bs []catalog.Backup
	err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		bs, err = tx.Backups(project, catalog.BackupFilter{ServerID: serverID})
		return err
	})
	return bs, err
}

// RetentionPlan is the dry run of a policy's retention over every bound
// server: what it would keep and delete now.
func (s *Scheduler) RetentionPlan(p catalog.Policy) ([]RetentionItem, error) {
	var servers []catalog.Server
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		servers, err = tx.BoundServers(p)
		return err
	}); err != nil {
		return nil, err
	}
	out := []RetentionItem{}
	for _, sv := range servers {
		bs, err := s.serverBackups(p.Project, sv.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, Retain(p, bs, s.clock.Now(), s.inUse.InUse)...)
	}
	return out, nil
}

// ApplyRetention prunes one server's automatic backups under its policy
// and returns what it deleted.
func (s *Scheduler) ApplyRetention(ctx context.Context, project, policyID, serverID string) ([]RetentionItem, error) {
	var p catalog.Policy
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		p, err = tx.Policy(project, policyID)
		return err
	}); err != nil {
		return nil, err
	}
	bs, err := s.serverBackups(project, serverID)
	if err != nil {
		return nil, err
	}
	var deleted []RetentionItem
	for _, it := range Retain(p, bs, s.clock.Now(), s.inUse.InUse) {
		if it.Verdict != VerdictDelete {
			continue
		}
		for _, b := range bs {
			if b.ID != it.BackupID {
				continue
			}
			if err := s.DeleteBackup(ctx, b, false); err != nil {
				if errors.Is(err, ErrBackupInUse) {
					continue // became busy meanwhile: next run prunes it
				}
				return deleted, err
			}
			deleted = append(deleted, it)
			s.log.Info("retention deleted backup", "backup", b.Name, "server", b.ServerName, "policy", p.Name, "reason", it.Reason)
		}
	}
	return deleted, nil
}

// DeleteBackup removes a backup's record and block maps in one
// transaction. The space of blocks no other backup uses returns with GC.
func (s *Scheduler) DeleteBackup(ctx context.Context, b catalog.Backup, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.Protected && !force {
		return fmt.Errorf("backup %s is %w; delete it with --force", b.Name, ErrProtected)
	}
	if s.inUse.InUse(b.ID) {
		return fmt.Errorf("backup %s is %w by a restore, an NBD export or a FUSE mount; detach, unmount or finish it first", b.Name, ErrBackupInUse)
	}
	var maps []blockstore.MapID
	for _, d := range b.Disks {
		id, err := blockstore.ParseMapID(d.MapID)
		if err != nil {
			return fmt.Errorf("backup %s disk %s: %w", b.Name, d.Name, err)
		}
		maps = append(maps, id)
	}
	err := s.cat.Release(func(tx *catalog.Txn) error {
		cur, err := tx.Backup(b.Project, b.ID)
		if err != nil {
			return err
		}
		if err := tx.DeleteBackup(cur); err != nil {
			return err
		}
		for _, id := range maps {
			if err := blockstore.DeleteMapTxn(tx.KV(), id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete backup %s: %w", b.Name, err)
	}
	for _, id := range maps {
		if err := s.store.PurgeMap(ctx, id); err != nil {
			s.log.Warn("remove map file after delete (GC will finish it)", "map", id, "err", err)
		}
	}
	return nil
}
