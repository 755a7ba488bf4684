package scheduler

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"csbs/blockstore"
	"csbs/catalog"
)

type execFunc func(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error)

func (f execFunc) Execute(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	return f(ctx, j, progress)
}

// TestWaitSeesTheEnd: Wait returns a job only once its end is recorded.
// The catalog's space check, which every write passes, holds the write
// of the job's final state while Wait is asked (with a context that is
// already done, so Wait cannot block on it): Wait must say it did not
// see the end rather than return the job as still running.
func TestWaitSeesTheEnd(t *testing.T) {
	s, err := blockstore.Open(filepath.Join(t.TempDir(), "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var executed atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	cat := catalog.New(s.KV(), catalog.Options{Space: func(catalog.WriteClass) error {
		if executed.Load() {
			close(held)
			<-release
		}
		return nil
	}})
	r := NewRunner(cat, execFunc(func(ctx context.Context, j catalog.Job, _ func(int64, int64)) (catalog.Job, error) {
		executed.Store(true)
		return j, nil
	}), NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)), slog.New(slog.DiscardHandler), 1, time.Hour)
	j, err := r.Submit(catalog.Job{Project: "prj-000000000001", Kind: catalog.JobGC})
	if err != nil {
		t.Fatal(err)
	}
	<-held // the executor returned; its final state is being written
	done, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := r.Wait(done, "", j.ID)
	if err == nil && !got.Finished() {
		t.Fatalf("Wait returned job %s as %s before its end was recorded", j.ID, got.State)
	}
	close(release)
	got, err = r.Wait(context.Background(), "", j.ID)
	if err != nil || got.State != catalog.JobSucceeded {
		t.Fatalf("Wait after the end: %s %v", got.State, err)
	}
}
