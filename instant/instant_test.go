package instant

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/hydrate"
	"csbs/scheduler"
)

const blockSize = 4096

// memSource is a disk image in memory, for ingest.
type memSource struct{ b []byte }

func (m memSource) Size() int64 { return int64(len(m.b)) }
func (m memSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// diskBytes is a disk of size bytes: random blocks, every third one zero.
func diskBytes(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, size)
	for off := 0; off < size; off += blockSize {
		if r.IntN(3) == 0 {
			continue
		}
		for i := off; i < min(off+blockSize, size); i++ {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

// exports is the NBD export registry as the daemon keeps it: names are
// "<restore>-<disk>", and a removed export's Closer is closed.
type exports struct {
	mu  sync.Mutex
	all map[string]Export
}

func (x *exports) Name(id, disk string) string { return id + "-" + disk }

func (x *exports) Add(e Export) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.all == nil {
		x.all = map[string]Export{}
	}
	x.all[e.Name] = e
}

func (x *exports) Remove(name string) {
	x.mu.Lock()
	e, ok := x.all[name]
	delete(x.all, name)
	x.mu.Unlock()
	if ok && e.Closer != nil {
		e.Closer.Close()
	}
}

func (x *exports) get(name string) (Export, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.all[name]
	return e, ok
}

func (x *exports) names() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for n := range x.all {
		out = append(out, n)
	}
	return out
}

// env is a real store and catalog with one Enhanced backup of two disks,
// a target directory the project may write to, and a Manager over them.
type env struct {
	t        *testing.T
	dir      string
	store    *blockstore.Store
	cat      *catalog.Catalog
	project  catalog.Project
	backup   catalog.Backup
	disks    map[string][]byte
	targets  string // directory granted for restore targets
	rules    *access.Rules
	exports  *exports
	hydrated atomic.Int64
	// runner runs the hydration jobs of the latest manager; shutdown
	// stops it as the daemon does (its jobs canceled with the cause
	// scheduler.ErrShutdown), then that manager.
	runner   *scheduler.Runner
	shutdown func()

	mu    sync.Mutex
	inUse map[string]int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	s, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e := &env{
		t: t, dir: dir, store: s, cat: catalog.New(s.KV(), catalog.Options{}),
		disks:   map[string][]byte{"vda": diskBytes(1, 1<<20), "vdb": diskBytes(2, 1<<20+1000)},
		targets: filepath.Join(dir, "targets"), exports: &exports{}, inUse: map[string]int{},
	}
	if err := os.Mkdir(e.targets, 0o700); err != nil {
		t.Fatal(err)
	}
	e.rules = &access.Rules{Projects: map[string]access.Grant{"p1": {TargetDirs: []string{e.targets}}}}
	err = e.cat.Update(func(tx *catalog.Txn) error {
		e.project, err = tx.CreateProject("p1", time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b := catalog.Backup{
		ID: catalog.NewID(catalog.KindBackup), Project: e.project.ID, ServerID: "srv-000000000001", ServerName: "web1",
		Name: "manualbk_0001", Created: time.Now().UTC(), Status: catalog.StatusAvailable, Type: catalog.TypeEnhanced,
	}
	for _, name := range []string{"vda", "vdb"} {
		p, err := s.Ingest(context.Background(), memSource{e.disks[name]}, blockstore.IngestOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(context.Background(), []*blockstore.PendingMap{p}, nil); err != nil {
			t.Fatal(err)
		}
		b.Disks = append(b.Disks, catalog.BackupDisk{Name: name, MapID: p.Info.ID.String(), Size: p.Info.Size})
	}
	if err := e.cat.Update(func(tx *catalog.Txn) error { return tx.PutBackup(b) }); err != nil {
		t.Fatal(err)
	}
	e.backup = b
	return e
}

// hydrateJobs is the daemon's job executor as far as hydrate jobs go.
type hydrateJobs struct{ m *Manager }

func (x *hydrateJobs) Execute(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	if j.Kind != catalog.JobHydrate {
		return j, fmt.Errorf("job %s: kind %s is not run here", j.ID, j.Kind)
	}
	return x.m.Hydrate(ctx, j, progress)
}

// manager is a Manager as the daemon builds it, on e's peers, with its
// hydration jobs in a real runner (a new one, as after a restart).
func (e *env) manager() *Manager {
	exec := &hydrateJobs{}
	runner := scheduler.NewRunner(e.cat, exec, scheduler.RealClock{}, slog.New(slog.DiscardHandler), 1, 0)
	if err := runner.Recover(); err != nil {
		e.t.Fatal(err)
	}
	m := New(Options{
		Catalog: CatalogOf(e.cat), Store: e.store, Exports: e.exports, Jobs: runner,
		Dir: filepath.Join(e.dir, "restores"),
		TargetGuard: func(project string, byAdmin bool) (func(string) error, error) {
			c := access.Caller{Admin: byAdmin, Project: "p1"}
			return func(real string) error { return e.rules.CheckPath(c, access.Target, real, real) }, nil
		},
		Acquire: func(id string) func() {
			e.mu.Lock()
			e.inUse[id]++
			e.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					e.mu.Lock()
					e.inUse[id]--
					e.mu.Unlock()
				})
			}
		},
		OnHydrated: func(n int64) { e.hydrated.Add(n) },
	})
	exec.m = m
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		runner.Run(ctx)
	}()
	var once sync.Once
	e.runner = runner
	e.shutdown = func() {
		once.Do(func() {
			stop()
			<-ran
			m.Shutdown()
		})
	}
	e.t.Cleanup(e.shutdown)
	return m
}

// job waits until the job is over (when final) or reads it as it is.
func (e *env) job(project, id string, final bool) catalog.Job {
	e.t.Helper()
	get := e.runner.Job
	if final {
		get = func(project, id string) (catalog.Job, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			return e.runner.Wait(ctx, project, id)
		}
	}
	j, err := get(project, id)
	if err != nil {
		e.t.Fatalf("job %s: %v", id, err)
	}
	if j.Kind != catalog.JobHydrate || j.RestoreID == "" {
		e.t.Fatalf("job %s: kind %s of restore %q, want a hydrate job", id, j.Kind, j.RestoreID)
	}
	return j
}

// exportNames lists the export names a restore record gives out.
func exportNames(r catalog.Restore) []string {
	var out []string
	for _, tg := range r.Targets {
		if tg.Export != "" {
			out = append(out, tg.Export)
		}
	}
	return out
}

func (e *env) users() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inUse[e.backup.ID]
}

// request is a restore of both disks as the API hands it to Start.
// rate: bytes per second; -1 unlimited. At 4 KiB/s the 2 MiB of the two
// disks take over eight minutes, so a test sees the restore running.
func (e *env) request(rate int64) catalog.Restore {
	return catalog.Restore{
		ID: catalog.NewID(catalog.KindRestore), Project: e.project.ID, BackupID: e.backup.ID, Instant: true,
		Rate: rate, State: catalog.RestoreRunning, Created: time.Now().UTC(),
		Targets: []catalog.RestoreTarget{
			{Disk: "vda", Target: filepath.Join(e.targets, "vda.img")},
			{Disk: "vdb", Target: filepath.Join(e.targets, "vdb.img")},
		},
	}
}

const slow, unlimited = 4096, -1

func (e *env) record(r catalog.Restore) catalog.Restore {
	e.t.Helper()
	var out catalog.Restore
	err := e.cat.View(func(tx *catalog.Txn) error {
		var err error
		out, err = tx.Restore(r.Project, r.ID)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// waitState waits until the recorded restore reaches state.
func (e *env) waitState(r catalog.Restore, state string) catalog.Restore {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cur := e.record(r)
		if cur.State == state {
			return cur
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("restore %s is %s (%s), want %s", r.ID, cur.State, cur.Error, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkTargets compares the targets with the backup's disks.
func (e *env) checkTargets(r catalog.Restore) {
	e.t.Helper()
	for _, tg := range r.Targets {
		got, err := os.ReadFile(tg.Target)
		if err != nil {
			e.t.Fatal(err)
		}
		if !bytes.Equal(got, e.disks[tg.Disk]) {
			e.t.Fatalf("target %s differs from disk %s of the backup", tg.Target, tg.Disk)
		}
	}
}

func (e *env) bitmapsExist(m *Manager, r catalog.Restore) bool {
	for _, tg := range r.Targets {
		for _, suffix := range []string{"", ".j0", ".j1"} {
			if _, err := os.Stat(m.BitmapPath(r.ID, tg.Disk) + suffix); err == nil {
				return true
			}
		}
	}
	return false
}

// TestStartToFinish: a restore serves both disks at once, hydrates to
// complete, keeps serving until finish, and finish leaves the targets
// equal to the backup with everything else cleaned up.
func TestStartToFinish(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	r, err := m.Start(context.Background(), e.request(unlimited), e.backup)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range r.Targets {
		if tg.Export != r.ID+"-"+tg.Disk || !tg.Fresh {
			t.Fatalf("target %+v: want export %s-%s and a fresh target", tg, r.ID, tg.Disk)
		}
		x, ok := e.exports.get(tg.Export)
		if !ok || x.Size != int64(len(e.disks[tg.Disk])) || x.BlockSize != blockSize || x.Project != e.project.ID || x.RestoreID != r.ID {
			t.Fatalf("export %s: %+v", tg.Export, x)
		}
	}
	if e.users() != 1 {
		t.Fatalf("backup in use %d times, want 1", e.users())
	}
	if r.JobID == "" || e.record(r).JobID != r.JobID {
		t.Fatalf("hydration job %q, recorded %q", r.JobID, e.record(r).JobID)
	}
	r = e.waitState(r, catalog.RestoreComplete)
	live := m.Live(r)
	total := int64(len(e.disks["vda"]) + len(e.disks["vdb"]))
	if live.Total != total || live.Done != live.Total {
		t.Fatalf("complete restore: done %d of %d", live.Done, live.Total)
	}
	if live.RateBps <= 0 {
		t.Fatalf("complete restore: copy rate %v", live.RateBps)
	}
	j := e.job(r.Project, r.JobID, true)
	if j.State != catalog.JobSucceeded || j.RestoreID != r.ID || j.Done != total || j.Total != total || !strings.Contains(j.Note, "is complete") {
		t.Fatalf("hydration job after complete: %s %d/%d of restore %s, note %q", j.State, j.Done, j.Total, j.RestoreID, j.Note)
	}
	if len(e.exports.names()) != 2 {
		t.Fatalf("a complete restore must keep serving: exports %v", e.exports.names())
	}
	r, err = m.Control(context.Background(), r, ActionFinish)
	if err != nil || r.State != catalog.RestoreSucceeded || r.Ended.IsZero() {
		t.Fatalf("finish: %s %v", r.State, err)
	}
	e.checkTargets(r)
	if n := len(e.exports.names()); n != 0 || e.users() != 0 || e.bitmapsExist(m, r) {
		t.Fatalf("after finish: %d exports, backup in use %d times, bitmaps left %v", n, e.users(), e.bitmapsExist(m, r))
	}
	if names := exportNames(e.record(r)); names != nil {
		t.Fatalf("a finished restore still names its exports %v", names)
	}
	if e.hydrated.Load() == 0 {
		t.Fatal("hydrated bytes were not reported")
	}
	if _, err := m.Control(context.Background(), r, ActionCancel); !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("cancel of a finished restore: %v, want a conflict", err)
	}
}

// TestStartRefuses: what Start refuses leaves nothing behind.
func TestStartRefuses(t *testing.T) {
	cases := []struct {
		name  string
		setup func(e *env, r *catalog.Restore, b *catalog.Backup)
		want  error
		msg   string
	}{
		{"common backup", func(e *env, r *catalog.Restore, b *catalog.Backup) { b.Type = catalog.TypeCommon }, catalog.ErrInvalid, "is Common"},
		{"backup being deleted", func(e *env, r *catalog.Restore, b *catalog.Backup) { b.Status = catalog.StatusDeleting }, catalog.ErrConflict, "is deleting"},
		{"no such disk", func(e *env, r *catalog.Restore, b *catalog.Backup) { r.Targets[1].Disk = "vdz" }, catalog.ErrInvalid, `has no disk "vdz"`},
		{"target not granted", func(e *env, r *catalog.Restore, b *catalog.Backup) {
			r.Targets[1].Target = filepath.Join(e.dir, "elsewhere.img")
		}, access.ErrDenied, "elsewhere.img"},
		{"target not empty", func(e *env, r *catalog.Restore, b *catalog.Backup) {
			if err := os.WriteFile(r.Targets[1].Target, []byte("data"), 0o600); err != nil {
				e.t.Fatal(err)
			}
		}, catalog.ErrInvalid, "not empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.manager()
			r, b := e.request(slow), e.backup
			tc.setup(e, &r, &b)
			_, err := m.Start(context.Background(), r, b)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Start: %v, want %v with %q", err, tc.want, tc.msg)
			}
			if n := len(e.exports.names()); n != 0 || e.users() != 0 {
				t.Fatalf("a refused start left %d exports, backup in use %d times", n, e.users())
			}
			err = e.cat.View(func(tx *catalog.Txn) error {
				_, err := tx.Restore(r.Project, r.ID)
				return err
			})
			if !errors.Is(err, catalog.ErrNotFound) {
				t.Fatalf("a refused restore was recorded: %v", err)
			}
		})
	}
}

// TestControl: which actions change which states, and what becomes of
// the hydration job; a restore's exports stay until it is finished or
// canceled, and a canceled or finished record names no export.
func TestControl(t *testing.T) {
	// jobCancel is csbs job cancel of the restore's hydration job.
	const jobCancel = "job cancel"
	type step struct {
		action string
		state  string // recorded state after the action
		err    error  // nil: success
		job    string // hydration job's state after the action
	}
	const (
		running   = catalog.JobRunning
		succeeded = catalog.JobSucceeded
		canceled  = catalog.JobCanceled
	)
	cases := []struct {
		name     string
		complete bool // hydrate to complete first
		steps    []step
		served   bool // exports still up at the end
	}{
		{"pause", false, []step{{ActionPause, catalog.RestorePaused, nil, running}}, true},
		{"pause twice", false, []step{{ActionPause, catalog.RestorePaused, nil, running}, {ActionPause, catalog.RestorePaused, nil, running}}, true},
		{"resume", false, []step{{ActionPause, catalog.RestorePaused, nil, running}, {ActionResume, catalog.RestoreRunning, nil, running}}, true},
		{"resume a running one", false, []step{{ActionResume, catalog.RestoreRunning, nil, running}}, true},
		{"finish before complete", false, []step{{ActionFinish, catalog.RestoreRunning, catalog.ErrConflict, running}}, true},
		{"finish a paused one", false, []step{{ActionPause, catalog.RestorePaused, nil, running}, {ActionFinish, catalog.RestorePaused, catalog.ErrConflict, running}}, true},
		{"cancel running", false, []step{{ActionCancel, catalog.RestoreCanceled, nil, canceled}}, false},
		{"cancel paused", false, []step{{ActionPause, catalog.RestorePaused, nil, running}, {ActionCancel, catalog.RestoreCanceled, nil, canceled}}, false},
		{"unknown action", false, []step{{"rewind", catalog.RestoreRunning, catalog.ErrInvalid, running}}, true},
		{"pause a complete one", true, []step{{ActionPause, catalog.RestoreComplete, nil, succeeded}}, true},
		{"finish", true, []step{{ActionFinish, catalog.RestoreSucceeded, nil, succeeded}}, false},
		{"cancel complete", true, []step{{ActionCancel, catalog.RestoreCanceled, nil, succeeded}}, false},
		{"nothing after cancel", false, []step{{ActionCancel, catalog.RestoreCanceled, nil, canceled}, {ActionResume, catalog.RestoreCanceled, catalog.ErrConflict, canceled}}, false},
		{"job cancel cancels the restore", false, []step{{jobCancel, catalog.RestoreCanceled, nil, canceled}}, false},
		{"job cancel of a paused one", false, []step{{ActionPause, catalog.RestorePaused, nil, running}, {jobCancel, catalog.RestoreCanceled, nil, canceled}}, false},
		{"job cancel after complete", true, []step{{jobCancel, catalog.RestoreComplete, catalog.ErrConflict, succeeded}}, true},
		{"nothing after job cancel", false, []step{{jobCancel, catalog.RestoreCanceled, nil, canceled}, {ActionCancel, catalog.RestoreCanceled, catalog.ErrConflict, canceled}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.manager()
			rate := int64(slow)
			if tc.complete {
				rate = unlimited
			}
			r, err := m.Start(context.Background(), e.request(rate), e.backup)
			if err != nil {
				t.Fatal(err)
			}
			if tc.complete {
				r = e.waitState(r, catalog.RestoreComplete)
				// The job records its end just after the restore is complete.
				if _, err := e.runner.Wait(context.Background(), r.Project, r.JobID); err != nil {
					t.Fatal(err)
				}
			}
			for _, st := range tc.steps {
				var err error
				if st.action == jobCancel {
					_, err = e.runner.Cancel(r.Project, r.JobID)
				} else {
					_, err = m.Control(context.Background(), e.record(r), st.action)
				}
				if st.err == nil && err != nil || st.err != nil && !errors.Is(err, st.err) {
					t.Fatalf("%s: %v, want %v", st.action, err, st.err)
				}
				if got := e.record(r); got.State != st.state {
					t.Fatalf("after %s: %s, want %s", st.action, got.State, st.state)
				}
				if j := e.job(r.Project, r.JobID, st.job != running); j.State != st.job {
					t.Fatalf("after %s: hydration job %s (%s), want %s", st.action, j.State, j.Error, st.job)
				}
			}
			served := len(e.exports.names()) == 2
			if served != tc.served {
				t.Fatalf("exports %v; want served %v", e.exports.names(), tc.served)
			}
			final := e.record(r)
			if !served {
				if e.users() != 0 || e.bitmapsExist(m, r) || final.Ended.IsZero() {
					t.Fatalf("ended restore: backup in use %d times, bitmaps left %v, ended %v", e.users(), e.bitmapsExist(m, r), final.Ended)
				}
			}
			if names := exportNames(final); served != (len(names) == 2) || !served && names != nil {
				t.Fatalf("record names exports %v; want served %v", names, served)
			}
			if final.State == catalog.RestoreCanceled && !strings.Contains(final.Error, "partial disk") {
				t.Fatalf("canceled restore says %q", final.Error)
			}
			if j := e.job(r.Project, r.JobID, false); j.State == catalog.JobCanceled && !strings.Contains(j.Note, "restore "+r.ID+" canceled") {
				t.Fatalf("canceled hydration job notes %q", j.Note)
			}
			if final.State == catalog.RestorePaused {
				if live := m.Live(final); live.ETASeconds != 0 {
					t.Fatalf("a paused restore shows an ETA of %v s", live.ETASeconds)
				}
			}
		})
	}
}

// TestRecover: after a restart, which recorded restores come back (in a
// new hydration job, the old one canceled by the shutdown), and what
// becomes of one whose backup, map, target, grant or bitmap is gone.
func TestRecover(t *testing.T) {
	const keep = ""
	cases := []struct {
		name    string
		state   string // recorded when the daemon stopped
		normal  bool   // a normal restore, not an instant one
		breakIt func(e *env, m *Manager, r catalog.Restore)
		want    string // state after Recover
		wantErr string // in the recorded error
		served  bool
	}{
		{name: "running resumes and completes", state: catalog.RestoreRunning, want: catalog.RestoreComplete, served: true},
		{name: "paused stays paused", state: catalog.RestorePaused, want: catalog.RestorePaused, served: true},
		{name: "complete serves without hydrating", state: catalog.RestoreComplete, want: catalog.RestoreComplete, served: true},
		{name: "failed is left alone", state: catalog.RestoreFailed, want: catalog.RestoreFailed},
		{name: "canceled is left alone", state: catalog.RestoreCanceled, want: catalog.RestoreCanceled},
		{name: "succeeded is left alone", state: catalog.RestoreSucceeded, want: catalog.RestoreSucceeded},
		{name: "normal restore is not ours", state: catalog.RestoreRunning, normal: true, want: catalog.RestoreRunning},
		{name: "backup deleted", state: catalog.RestoreRunning, want: catalog.RestoreFailed, wantErr: "not found",
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				if err := e.cat.Update(func(tx *catalog.Txn) error { return tx.DeleteBackup(e.backup) }); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "block map gone", state: catalog.RestorePaused, want: catalog.RestoreFailed, wantErr: blockstore.ErrMapNotFound.Error(),
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				id, err := blockstore.ParseMapID(e.backup.Disks[1].MapID)
				if err != nil {
					e.t.Fatal(err)
				}
				if err := e.cat.Update(func(tx *catalog.Txn) error { return blockstore.DeleteMapTxn(tx.KV(), id) }); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "target removed", state: catalog.RestoreRunning, want: catalog.RestoreFailed, wantErr: "vdb.img",
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				if err := os.Remove(r.Targets[1].Target); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "grant removed", state: catalog.RestoreRunning, want: catalog.RestoreFailed, wantErr: access.ErrDenied.Error(),
			breakIt: func(e *env, m *Manager, r catalog.Restore) { e.rules.Projects = nil }},
		{name: "bitmap removed", state: catalog.RestoreRunning, want: catalog.RestoreFailed, wantErr: "vdb.bitmap: stat",
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				if err := os.Remove(m.BitmapPath(r.ID, "vdb")); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "journal removed", state: catalog.RestorePaused, want: catalog.RestoreFailed, wantErr: "vda.bitmap.j1: stat",
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				if err := os.Remove(m.BitmapPath(r.ID, "vda") + ".j1"); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "bitmap of another disk", state: catalog.RestoreRunning, want: catalog.RestoreFailed, wantErr: hydrate.ErrBadBitmap.Error(),
			breakIt: func(e *env, m *Manager, r catalog.Restore) {
				a, b := m.BitmapPath(r.ID, "vda"), m.BitmapPath(r.ID, "vdb")
				data, err := os.ReadFile(a)
				if err != nil {
					e.t.Fatal(err)
				}
				if err := os.WriteFile(b, data, 0o600); err != nil {
					e.t.Fatal(err)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.manager()
			r, err := m.Start(context.Background(), e.request(slow), e.backup)
			if err != nil {
				t.Fatal(err)
			}
			oldJob := r.JobID
			e.shutdown()
			if n := len(e.exports.names()); n != 0 || e.users() != 0 {
				t.Fatalf("after shutdown: %d exports, backup in use %d times", n, e.users())
			}
			if got := e.record(r).State; got != catalog.RestoreRunning {
				t.Fatalf("shutdown changed the recorded state to %s", got)
			}
			if j := e.job(r.Project, oldJob, true); j.State != catalog.JobCanceled || j.Error != "canceled: "+scheduler.ErrShutdown.Error() || !strings.Contains(j.Note, "resumes from its bitmap") {
				t.Fatalf("hydration job after shutdown: %s %q, note %q", j.State, j.Error, j.Note)
			}
			r, err = CatalogOf(e.cat).UpdateRestore(r.Project, r.ID, func(x *catalog.Restore) {
				x.State, x.Instant, x.Rate = tc.state, !tc.normal, unlimited
			})
			if err != nil {
				t.Fatal(err)
			}
			if tc.breakIt != nil {
				tc.breakIt(e, m, r)
			}
			e.hydrated.Store(0)

			m = e.manager()
			if err := m.Recover(); err != nil {
				t.Fatal(err)
			}
			served := len(e.exports.names()) == 2
			if served != tc.served || !served && len(e.exports.names()) != 0 {
				t.Fatalf("exports after recovery %v; want served %v", e.exports.names(), tc.served)
			}
			if served != (e.users() == 1) {
				t.Fatalf("backup in use %d times with served %v", e.users(), served)
			}
			rec := e.record(r)
			// Served, the record names the exports; not resumed, none.
			if names := exportNames(rec); served && len(names) != 2 || tc.wantErr != keep && names != nil {
				t.Fatalf("record names exports %v; served %v", names, served)
			}
			// Hydration resumes in a new job; a complete restore needs none.
			if hydrates := served && tc.state != catalog.RestoreComplete; hydrates != (rec.JobID != oldJob) {
				t.Fatalf("hydration job after recovery %s (before %s); want a new one %v", rec.JobID, oldJob, hydrates)
			}
			var got catalog.Restore
			if tc.want == catalog.RestoreComplete && tc.state != catalog.RestoreComplete {
				got = e.waitState(r, tc.want)
				e.checkTargets(got)
				if j := e.job(r.Project, got.JobID, true); j.State != catalog.JobSucceeded {
					t.Fatalf("resumed hydration job %s (%s)", j.State, j.Error)
				}
			} else {
				got = e.record(r)
			}
			if got.State != tc.want {
				t.Fatalf("state after recovery %s (%s), want %s", got.State, got.Error, tc.want)
			}
			if tc.wantErr != keep && (!strings.Contains(got.Error, "could not resume after restart") || !strings.Contains(got.Error, tc.wantErr)) {
				t.Fatalf("recorded error %q, want the reason %q", got.Error, tc.wantErr)
			}
			if tc.wantErr == keep && got.Error != "" {
				t.Fatalf("recorded error %q", got.Error)
			}
			if tc.state == catalog.RestoreComplete && e.hydrated.Load() != 0 {
				t.Fatalf("a complete restore hydrated %d bytes again", e.hydrated.Load())
			}
			if tc.state == catalog.RestorePaused && served {
				if _, err := m.Control(context.Background(), got, ActionResume); err != nil {
					t.Fatal(err)
				}
				e.checkTargets(e.waitState(r, catalog.RestoreComplete))
				if j := e.job(r.Project, got.JobID, true); j.State != catalog.JobSucceeded {
					t.Fatalf("resumed hydration job %s (%s)", j.State, j.Error)
				}
			}
		})
	}
}

// TestLive: progress while running counts the blocks in the targets and
// leaves restores that the Manager does not run alone.
func TestLive(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	r, err := m.Start(context.Background(), e.request(slow), e.backup)
	if err != nil {
		t.Fatal(err)
	}
	live := m.Live(r)
	total := int64(len(e.disks["vda"]) + len(e.disks["vdb"]))
	if live.Total != total || live.Done < 0 || live.Done >= total {
		t.Fatalf("live: done %d of %d, want part of %d", live.Done, live.Total, total)
	}
	// The job reports the same progress (its first report is made as it
	// starts, which may be after Start returns).
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if j := e.job(r.Project, r.JobID, false); j.Total == total && j.State == catalog.JobRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hydration job %+v: want running with %d bytes in all", e.job(r.Project, r.JobID, false), total)
		}
	}
	other := e.request(slow)
	other.Targets[0].Export = "gone-vda"
	if got := m.Live(other); got.Done != 0 || got.Total != 0 || exportNames(got) != nil {
		t.Fatalf("a restore the manager does not run got progress %d/%d, exports %v", got.Done, got.Total, exportNames(got))
	}
	if other.Targets[0].Export != "gone-vda" {
		t.Fatal("Live changed the caller's targets")
	}
}

// TestHydrationNotStarted: a restore whose hydration job cannot be
// started (the runner is shutting down) is recorded as failed with its
// exports still serving, and cancel frees them; a hydrate job for a
// restore that is not open fails with the restore named.
func TestHydrationNotStarted(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	e.shutdown()
	r, err := m.Start(context.Background(), e.request(slow), e.backup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Shutdown)
	if rec := e.record(r); rec.State != catalog.RestoreFailed || !strings.Contains(rec.Error, "hydration not started") || rec.JobID != "" {
		t.Fatalf("restore %s (%s), job %q: want failed, hydration not started", rec.State, rec.Error, rec.JobID)
	}
	if n := len(e.exports.names()); n != 2 {
		t.Fatalf("%d exports, want both still serving", n)
	}
	r, err = m.Control(context.Background(), e.record(r), ActionCancel)
	if err != nil || r.State != catalog.RestoreCanceled {
		t.Fatalf("cancel: %s %v", r.State, err)
	}
	if n := len(e.exports.names()); n != 0 || e.users() != 0 || e.bitmapsExist(m, r) {
		t.Fatalf("after cancel: %d exports, backup in use %d times, bitmaps left %v", n, e.users(), e.bitmapsExist(m, r))
	}
	_, err = m.Hydrate(context.Background(), catalog.Job{Kind: catalog.JobHydrate, RestoreID: r.ID}, func(int64, int64) {})
	if err == nil || !strings.Contains(err.Error(), "restore "+r.ID+" is not open") {
		t.Fatalf("hydrate job of a canceled restore: %v", err)
	}
}
