package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"csbs/catalog"
)

// Executor does the work of one job. It returns the job with whatever it
// filled in (the backup id made, for example). progress may be called from
// any goroutine.
type Executor interface {
	Execute(ctx context.Context, job catalog.Job, progress func(done, total int64)) (catalog.Job, error)
}

// ErrServerBusy means a backup job of the same server is already queued or
// running; the new one is recorded as skipped.
var ErrServerBusy = errors.New("server already has a backup job")

// ErrShutdown is the cause of a running job's context when the daemon
// shuts down (context.Cause): an executor tells it from a job canceled by
// a user (cause context.Canceled) to keep what must resume at the next
// start.
var ErrShutdown = errors.New("the daemon shut down")

// Runner queues and runs jobs. Backup jobs share a pool of
// MaxConcurrent slots and run in submission order; a server never has two
// backup jobs at once. Other kinds start at once. Jobs are persisted in the
// catalog at every state change; progress lives in memory and is merged in
// by Job.
type Runner struct {
	cat   *catalog.Catalog
	exec  Executor
	clock Clock
	log   *slog.Logger
	max   int
	// window: an automatic job that cannot start within this time after
	// its scheduled time is skipped (Karbor's window).
	window time.Duration

	mu       sync.Mutex
	queue    []catalog.Job
	running  map[string]*live // job id → live state
	servers  map[string]string
	wake     chan struct{}
	finished map[string]chan struct{} // closed when the job ends
	wg       sync.WaitGroup
	closed   bool
}

type live struct {
	cancel      context.CancelCauseFunc
	done, total int64
}

// NewRunner returns a runner; call Run to start dispatching.
func NewRunner(cat *catalog.Catalog, exec Executor, clock Clock, log *slog.Logger, maxConcurrent int, window time.Duration) *Runner {
	return &Runner{
		cat: cat, exec: exec, clock: clock, log: log, max: max(1, maxConcurrent), window: window,
		running: map[string]*live{}, servers: map[string]string{},
		wake: make(chan struct{}, 1), finished: map[string]chan struct{}{},
	}
}

// Recover marks jobs left queued or running by a previous daemon as
// failed. Call it once before Run.
func (r *Runner) Recover() error {
	return r.cat.Release(func(tx *catalog.Txn) error {
		jobs, err := tx.ActiveJobs("")
		if err != nil {
			return err
		}
		for _, j := range jobs {
			j.Error = fmt.Sprintf("interrupted: the daemon stopped while the job was %s; nothing of it became visible", j.State)
			if j.Kind == catalog.JobHydrate {
				j.Error = "interrupted: the daemon stopped during hydration; the restore resumes from its bitmap in a new job (csbs restore show " + j.RestoreID + ")"
			}
			j.State = catalog.JobFailed
			j.Ended = r.clock.Now().UTC()
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		return nil
	})
}

// Submit records a job and queues it. A backup job for a server that
// already has one is recorded as skipped and returned with ErrServerBusy.
func (r *Runner) Submit(j catalog.Job) (catalog.Job, error) {
	if j.ID == "" {
		j.ID = catalog.NewID(catalog.KindJob)
	}
	j.Created = r.clock.Now().UTC()
	j.State = catalog.JobQueued
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return j, fmt.Errorf("the daemon is shutting down; job not accepted")
	}
	if j.Kind == catalog.JobBackup {
		if other, busy := r.servers[j.ServerID]; busy {
			j.State = catalog.JobSkipped
			j.Ended = j.Created
			j.Error = fmt.Sprintf("server %s already has backup job %s queued or running", j.ServerID, other)
			if err := r.putNew(j); err != nil {
				return j, err
			}
			return j, fmt.Errorf("%w: %s", ErrServerBusy, j.Error)
		}
	}
	if err := r.putNew(j); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			// Keep a trace of the refused job (a scheduled backup has no
			// caller to tell): a skipped record is a release-class write.
			j.State, j.Ended, j.Error = catalog.JobSkipped, j.Created, "not started: "+err.Error()
			if perr := r.put(j); perr != nil {
				r.log.Warn("record job refused for lack of space", "job", j.ID, "err", perr)
			}
		}
		return j, err
	}
	r.finished[j.ID] = make(chan struct{})
	if j.Kind == catalog.JobBackup {
		r.servers[j.ServerID] = j.ID
		r.queue = append(r.queue, j)
		r.poke()
	} else {
		r.startLocked(j)
	}
	return j, nil
}

// putNew records a submitted job. A backup job adds data to the store, so
// it needs the whole free-space reserve and is refused on a full disk; a
// restore, scrub, GC or retention job reads or frees space and must work
// there (see catalog.WriteClass).
func (r *Runner) putNew(j catalog.Job) error {
	if j.Kind == catalog.JobBackup {
		return r.cat.Update(func(tx *catalog.Txn) error { return tx.PutJob(j) })
	}
	return r.put(j)
}

// put records the progress or end of a submitted job.
func (r *Runner) put(j catalog.Job) error {
	return r.cat.Release(func(tx *catalog.Txn) error { return tx.PutJob(j) })
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run dispatches queued jobs until ctx ends, then cancels running jobs and
// waits for them.
func (r *Runner) Run(ctx context.Context) {
	for {
		r.mu.Lock()
		for len(r.queue) > 0 && r.runningBackupsLocked() < r.max {
			j := r.queue[0]
			r.queue = r.queue[1:]
			if late := r.clock.Now().Sub(j.Scheduled); !j.Scheduled.IsZero() && r.window > 0 && late > r.window {
				r.skipLocked(j, fmt.Sprintf("could not start within the %s window after its scheduled time %s (it waited %s for a free slot)", r.window, j.Scheduled.Format(time.RFC3339), late.Round(time.Second)))
				continue
			}
			r.startLocked(j)
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			r.shutdown()
			return
		case <-r.wake:
		}
	}
}

func (r *Runner) skipLocked(j catalog.Job, why string) {
	j.State, j.Error, j.Ended = catalog.JobSkipped, why, r.clock.Now().UTC()
	if r.servers[j.ServerID] == j.ID {
		delete(r.servers, j.ServerID)
	}
	if err := r.put(j); err != nil {
		r.log.Error("persist skipped job", "job", j.ID, "err", err)
	}
	r.log.Warn("job skipped", "job", j.ID, "reason", why)
	if done := r.finished[j.ID]; done != nil {
		delete(r.finished, j.ID)
		close(done)
	}
}

func (r *Runner) runningBackupsLocked() int {
	n := 0
	for _, id := range r.servers {
		if _, ok := r.running[id]; ok {
			n++
		}
	}
	return n
}

func (r *Runner) startLocked(j catalog.Job) {
	ctx, cancel := context.WithCancelCause(context.Background())
	l := &live{cancel: cancel}
	r.running[j.ID] = l
	j.State = catalog.JobRunning
	j.Started = r.clock.Now().UTC()
	if err := r.put(j); err != nil {
		r.log.Error("persist job start", "job", j.ID, "err", err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel(nil)
		out, err := r.exec.Execute(ctx, j, func(done, total int64) {
			r.mu.Lock()
			l.done, l.total = done, total
			r.mu.Unlock()
		})
		r.finish(out, l, err, context.Cause(ctx))
	}()
}

// finish records the end of a job; canceled is the cause of the job's
// context when it was canceled (nil otherwise).
func (r *Runner) finish(j catalog.Job, l *live, err error, canceled error) {
	r.mu.Lock()
	j.Done, j.Total = l.done, l.total
	r.mu.Unlock()

	j.Ended = r.clock.Now().UTC()
	switch {
	case err == nil:
		j.State = catalog.JobSucceeded
		j.Done = j.Total
	case canceled != nil && errors.Is(err, context.Canceled):
		j.State = catalog.JobCanceled
		j.Error = "canceled"
		if errors.Is(canceled, ErrShutdown) {
			j.Error = "canceled: " + ErrShutdown.Error()
		}
	default:
		j.State = catalog.JobFailed
		j.Error = err.Error()
	}
	if perr := r.put(j); perr != nil {
		r.log.Error("persist job end", "job", j.ID, "err", perr)
	}
	// Only now: a job still in running and finished is one whose end is
	// not recorded yet, and Wait waits for it.
	r.mu.Lock()
	delete(r.running, j.ID)
	if r.servers[j.ServerID] == j.ID {
		delete(r.servers, j.ServerID)
	}
	done := r.finished[j.ID]
	delete(r.finished, j.ID)
	r.mu.Unlock()
	level := slog.LevelInfo
	if j.State == catalog.JobFailed {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "job ended", "job", j.ID, "kind", j.Kind, "state", j.State, "err", j.Error)
	if done != nil {
		close(done)
	}
	r.poke()
}

// Job returns a job of the project ("" = any) with live progress merged.
func (r *Runner) Job(project, id string) (catalog.Job, error) {
	var j catalog.Job
	err := r.cat.View(func(tx *catalog.Txn) error {
		var err error
		j, err = tx.Job(project, id)
		return err
	})
	if err != nil {
		return j, err
	}
	return r.Live(j), nil
}

// Jobs lists a project's jobs newest first, a page at a time, with live
// progress merged.
func (r *Runner) Jobs(project string, pg catalog.Page) ([]catalog.Job, string, error) {
	var js []catalog.Job
	var next string
	err := r.cat.View(func(tx *catalog.Txn) error {
		var err error
		js, next, err = tx.JobPage(project, pg)
		return err
	})
	for i := range js {
		js[i] = r.Live(js[i])
	}
	return js, next, err
}

// Live returns j with the progress of its run merged in, if it runs.
func (r *Runner) Live(j catalog.Job) catalog.Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.running[j.ID]; ok && !j.Finished() {
		j.Done, j.Total = l.done, l.total
	}
	return j
}

// Wait blocks until the job ends or ctx is done, and returns it.
func (r *Runner) Wait(ctx context.Context, project, id string) (catalog.Job, error) {
	r.mu.Lock()
	done := r.finished[id]
	r.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return catalog.Job{}, ctx.Err()
		}
	}
	return r.Job(project, id)
}

// Cancel cancels a queued or running job of the project.
func (r *Runner) Cancel(project, id string) (catalog.Job, error) {
	j, err := r.Job(project, id)
	if err != nil {
		return j, err
	}
	r.mu.Lock()
	if l, ok := r.running[id]; ok {
		l.cancel(nil)
		r.mu.Unlock()
		return r.Wait(context.Background(), project, id)
	}
	for i, q := range r.queue {
		if q.ID == id {
			r.queue = append(r.queue[:i], r.queue[i+1:]...)
			delete(r.servers, q.ServerID)
			r.mu.Unlock()
			q.State, q.Error, q.Ended = catalog.JobCanceled, "canceled before it started", r.clock.Now().UTC()
			err := r.put(q)
			r.mu.Lock()
			done := r.finished[id]
			delete(r.finished, id)
			r.mu.Unlock()
			if done != nil {
				close(done)
			}
			return q, err
		}
	}
	r.mu.Unlock()
	if j.Finished() {
		return j, fmt.Errorf("%w: job %s already %s", catalog.ErrConflict, id, j.State)
	}
	return j, nil
}

// ServerBusy reports whether a server has a queued or running backup job.
func (r *Runner) ServerBusy(serverID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.servers[serverID]
	return ok
}

// Active returns the number of queued and running jobs.
func (r *Runner) Active() (queued, running int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue), len(r.running)
}

func (r *Runner) shutdown() {
	r.mu.Lock()
	r.closed = true
	for _, l := range r.running {
		l.cancel(ErrShutdown)
	}
	queued := r.queue
	r.queue = nil
	r.mu.Unlock()
	for _, q := range queued {
		q.State, q.Error, q.Ended = catalog.JobCanceled, "canceled: the daemon shut down before the job started", r.clock.Now().UTC()
		_ = r.put(q)
	}
	r.wg.Wait()
}
