package engine

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/internal/kv"
	"csbs/restore"
)

const blockSize = 4096

// env is an Engine on a real store and catalog, with one project whose
// tokens may read disk images below src and write restores below dst.
type env struct {
	t        *testing.T
	e        *Engine
	store    *blockstore.Store
	cat      *catalog.Catalog
	project  catalog.Project
	src, dst string
	now      time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	s, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	v := &env{t: t, store: s, cat: catalog.New(s.KV(), catalog.Options{}), src: filepath.Join(dir, "src"), dst: filepath.Join(dir, "dst"),
		now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	for _, d := range []string{v.src, v.dst} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	v.e = &Engine{
		Store: s, Catalog: v.cat, Now: func() time.Time { return v.now }, Log: slog.New(slog.DiscardHandler),
		Access: &access.Rules{
			Protected: []string{filepath.Join(dir, "store")},
			Projects:  map[string]access.Grant{"p1": {SourceDirs: []string{v.src}, TargetDirs: []string{v.dst}}},
		},
	}
	err = v.cat.Update(func(tx *catalog.Txn) error {
		v.project, err = tx.CreateProject("p1", v.now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// image writes a disk image of size bytes (random blocks, some zero) and
// returns its content.
func (v *env) image(name string, seed uint64, size int) []byte {
	v.t.Helper()
	r := rand.New(rand.NewPCG(seed, 5))
	b := make([]byte, size)
	for off := 0; off < size; off += blockSize {
		if r.IntN(4) == 0 {
			continue
		}
		for i := off; i < min(off+blockSize, size); i++ {
			b[i] = byte(r.Uint32())
		}
	}
	if err := os.WriteFile(filepath.Join(v.src, name), b, 0o600); err != nil {
		v.t.Fatal(err)
	}
	return b
}

// server adds a server whose disks are the named images in src, added
// by a project token.
func (v *env) server(name string, disks ...string) catalog.Server {
	v.t.Helper()
	s := catalog.Server{Project: v.project.ID, Name: name, AZ: "az1", Created: v.now}
	for i, img := range disks {
		fi, err := os.Stat(filepath.Join(v.src, img))
		if err != nil {
			v.t.Fatal(err)
		}
		s.Disks = append(s.Disks, catalog.Disk{Name: "vd" + string(rune('a'+i)), Source: filepath.Join(v.src, img), Size: fi.Size()})
	}
	err := v.cat.Update(func(tx *catalog.Txn) error {
		var err error
		s, err = tx.CreateServer(s)
		return err
	})
	if err != nil {
		v.t.Fatal(err)
	}
	return s
}

func (v *env) backup(srv catalog.Server, trigger string, full, enableIR bool) (catalog.Backup, error) {
	v.now = v.now.Add(time.Minute)
	return v.e.Backup(context.Background(), catalog.Job{Project: v.project.ID, ServerID: srv.ID, Trigger: trigger, Full: full, EnableIR: enableIR}, nil)
}

func (v *env) read(fn func(tx *catalog.Txn) error) {
	v.t.Helper()
	if err := v.cat.View(fn); err != nil {
		v.t.Fatal(err)
	}
}

// maps counts committed maps and map files (a failed backup leaves
// neither).
func (v *env) maps() (committed, files int) {
	v.t.Helper()
	ms, err := v.store.ListMaps()
	if err != nil {
		v.t.Fatal(err)
	}
	_ = filepath.WalkDir(filepath.Join(v.store.Dir(), "maps"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return nil
	})
	return len(ms), files
}

// TestBackupTypeFlow runs sequences of backups through the engine: each
// backup's type follows the Instant Restore rules from what the backups
// before it committed (the project's IR switch, the server's flags).
func TestBackupTypeFlow(t *testing.T) {
	type step struct {
		server   string // "web1" or "db1"
		trigger  string
		full, ir bool
		want     string // type, or "" when the backup is refused
		err      error  // with want ""
	}
	m, a := catalog.TriggerManual, catalog.TriggerAuto
	common, enhanced := catalog.TypeCommon, catalog.TypeEnhanced
	cases := []struct {
		name  string
		steps []step
	}{
		{"before IR everything is Common (rule 1)", []step{
			{"web1", m, false, false, common, nil}, {"web1", a, false, false, common, nil}, {"web1", m, true, false, common, nil},
		}},
		{"a manual full backup enables IR (rule 2)", []step{
			{"web1", a, false, false, common, nil}, {"web1", m, true, true, enhanced, nil}, {"web1", a, false, false, enhanced, nil},
		}},
		{"after IR a server never backed up automatically gets Enhanced manual backups (rule 3)", []step{
			{"db1", m, true, true, enhanced, nil}, {"web1", m, false, false, enhanced, nil}, {"web1", a, false, false, common, nil},
			{"web1", m, false, false, common, nil},
		}},
		{"automatic backups are Common until a manual full one (rule 4)", []step{
			{"web1", a, false, false, common, nil}, {"db1", m, true, true, enhanced, nil}, {"web1", a, false, false, common, nil},
			{"web1", m, false, false, common, nil}, {"web1", m, true, false, enhanced, nil}, {"web1", a, false, false, enhanced, nil},
			{"web1", m, false, false, enhanced, nil},
		}},
		{"enabling IR needs a full backup", []step{
			{"web1", m, false, true, "", catalog.ErrIRNeedsFull}, {"web1", m, false, false, common, nil},
		}},
		{"an automatic backup cannot enable IR", []step{
			{"web1", a, true, true, "", nil}, {"web1", m, false, false, common, nil},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t)
			v.image("web1.img", 1, 64*blockSize)
			v.image("db1.img", 2, 32*blockSize)
			servers := map[string]catalog.Server{"web1": v.server("web1", "web1.img"), "db1": v.server("db1", "db1.img")}
			made := 0
			for i, st := range tc.steps {
				b, err := v.backup(servers[st.server], st.trigger, st.full, st.ir)
				if st.want == "" {
					if err == nil || st.err != nil && !errors.Is(err, st.err) {
						t.Fatalf("step %d: %v, want a refusal %v", i, err, st.err)
					}
					if committed, files := v.maps(); committed != made || files != made {
						t.Fatalf("step %d: a refused backup left %d maps, %d map files (want %d)", i, committed, files, made)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				made++
				if b.Type != st.want || b.TypeReason == "" {
					t.Fatalf("step %d (%s %s full=%v ir=%v): %s (%s), want %s", i, st.server, st.trigger, st.full, st.ir, b.Type, b.TypeReason, st.want)
				}
			}
		})
	}
}

// TestIRSideEffects: what a committed backup records for the next
// decision, and that only committed backups record it.
func TestIRSideEffects(t *testing.T) {
	v := newEnv(t)
	v.image("web1.img", 1, 16*blockSize)
	web1 := v.server("web1", "web1.img")
	if _, err := v.backup(web1, catalog.TriggerAuto, false, false); err != nil {
		t.Fatal(err)
	}
	enabled := v.now.Add(time.Minute)
	if _, err := v.backup(web1, catalog.TriggerManual, true, true); err != nil {
		t.Fatal(err)
	}
	if _, err := v.backup(web1, catalog.TriggerManual, true, true); err != nil {
		t.Fatal(err)
	}
	v.read(func(tx *catalog.Txn) error {
		p, err := tx.Project(v.project.ID)
		if err != nil {
			return err
		}
		if !p.IREnabledAt.Equal(enabled) {
			t.Fatalf("IR enabled at %s, want the first enabling backup's time %s", p.IREnabledAt, enabled)
		}
		s, err := tx.Server(v.project.ID, web1.ID)
		if err != nil {
			return err
		}
		if !s.HadAutoBackup || !s.ManualFullAfterIR {
			t.Fatalf("server flags: had auto %v, manual full after IR %v", s.HadAutoBackup, s.ManualFullAfterIR)
		}
		return nil
	})
}

// TestBackupRecord: the committed record names every disk with its map,
// and the maps read back as the sources.
func TestBackupRecord(t *testing.T) {
	v := newEnv(t)
	vda := v.image("a.img", 1, 40*blockSize+100)
	vdb := v.image("b.img", 2, 8*blockSize)
	srv := v.server("web1", "a.img", "b.img")
	var last int64
	b, err := v.e.Backup(context.Background(), catalog.Job{Project: v.project.ID, ServerID: srv.ID, Trigger: catalog.TriggerManual}, func(done, total int64) {
		if done < last || total != int64(len(vda)+len(vdb)) {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.Name, "manualbk_") || !strings.HasSuffix(b.ID, strings.TrimPrefix(b.Name, "manualbk_")) {
		t.Fatalf("generated name %s for backup %s", b.Name, b.ID)
	}
	if b.Status != catalog.StatusAvailable || b.ServerName != "web1" || !b.Created.Equal(v.now) || len(b.Disks) != 2 {
		t.Fatalf("record %+v", b)
	}
	for i, want := range [][]byte{vda, vdb} {
		d := b.Disks[i]
		if d.Size != int64(len(want)) || d.NewBytes <= 0 || d.Blocks <= 0 {
			t.Fatalf("disk %s: %+v", d.Name, d)
		}
		id, err := blockstore.ParseMapID(d.MapID)
		if err != nil {
			t.Fatal(err)
		}
		vol, err := v.store.OpenVolume(id)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := vol.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		vol.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("disk %s reads back different", d.Name)
		}
	}
	v.read(func(tx *catalog.Txn) error {
		got, err := tx.Backup(v.project.ID, b.ID)
		if err != nil || got.Name != b.Name || len(got.Disks) != 2 {
			t.Fatalf("recorded backup %+v %v", got, err)
		}
		return nil
	})

	// An automatic backup is autobk_; a source that grew updates the
	// server's disk size.
	if err := os.WriteFile(filepath.Join(v.src, "b.img"), append(vdb, make([]byte, blockSize)...), 0o600); err != nil {
		t.Fatal(err)
	}
	b2, err := v.backup(srv, catalog.TriggerAuto, false, false)
	if err != nil || !strings.HasPrefix(b2.Name, "autobk_") {
		t.Fatalf("automatic backup %q: %v", b2.Name, err)
	}
	v.read(func(tx *catalog.Txn) error {
		s, err := tx.Server(v.project.ID, srv.ID)
		if err != nil || s.Disks[1].Size != int64(len(vdb)+blockSize) {
			t.Fatalf("server disk size after growth: %+v %v", s.Disks, err)
		}
		return nil
	})

	// A name the server's backups already use is refused, and nothing of
	// the refused backup stays.
	before, _ := v.maps()
	_, err = v.e.Backup(context.Background(), catalog.Job{Project: v.project.ID, ServerID: srv.ID, Trigger: catalog.TriggerManual, BackupName: b.Name}, nil)
	if !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("backup named %s again: %v, want a conflict", b.Name, err)
	}
	if committed, files := v.maps(); committed != before || files != before {
		t.Fatalf("the refused backup left maps: %d committed, %d files, want %d", committed, files, before)
	}
}

// TestCommitBackupRecord: the writes made with the maps, rule by rule.
func TestCommitBackupRecord(t *testing.T) {
	cases := []struct {
		name     string
		decision catalog.TypeDecision
		trigger  string
		irBefore bool // the project has IR enabled already
		noServer bool // the server was removed during the backup
		check    func(t *testing.T, p catalog.Project, s catalog.Server, sErr error)
	}{
		{"enables IR", catalog.TypeDecision{Type: catalog.TypeEnhanced, EnablesIR: true, MarksManualFull: true}, catalog.TriggerManual, false, false,
			func(t *testing.T, p catalog.Project, s catalog.Server, _ error) {
				if !p.IREnabled() || !s.ManualFullAfterIR || s.HadAutoBackup {
					t.Fatalf("project IR %v, server %+v", p.IREnabled(), s)
				}
			}},
		{"keeps the first IR time", catalog.TypeDecision{Type: catalog.TypeEnhanced, EnablesIR: true}, catalog.TriggerManual, true, false,
			func(t *testing.T, p catalog.Project, s catalog.Server, _ error) {
				if !p.IREnabledAt.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
					t.Fatalf("IR enabled at %s, want the earlier time kept", p.IREnabledAt)
				}
			}},
		{"automatic marks the server", catalog.TypeDecision{Type: catalog.TypeCommon}, catalog.TriggerAuto, false, false,
			func(t *testing.T, p catalog.Project, s catalog.Server, _ error) {
				if p.IREnabled() || !s.HadAutoBackup || s.ManualFullAfterIR || s.Disks[0].Size != 12345 {
					t.Fatalf("project IR %v, server %+v", p.IREnabled(), s)
				}
			}},
		{"server removed meanwhile", catalog.TypeDecision{Type: catalog.TypeCommon}, catalog.TriggerAuto, false, true,
			func(t *testing.T, p catalog.Project, s catalog.Server, sErr error) {
				if !errors.Is(sErr, catalog.ErrNotFound) {
					t.Fatalf("server: %v", sErr)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t)
			v.image("a.img", 1, blockSize)
			srv := v.server("web1", "a.img")
			err := v.cat.Update(func(tx *catalog.Txn) error {
				if tc.irBefore {
					p := v.project
					p.IREnabledAt = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
					if err := tx.PutProject(p); err != nil {
						return err
					}
				}
				if tc.noServer {
					return tx.DeleteServer(srv)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			b := catalog.Backup{ID: catalog.NewID(catalog.KindBackup), Project: v.project.ID, ServerID: srv.ID, ServerName: srv.Name,
				Trigger: tc.trigger, Type: tc.decision.Type, Status: catalog.StatusAvailable,
				Disks: []catalog.BackupDisk{{Name: "vda", Size: 12345}}}
			err = v.store.Commit(context.Background(), nil, func(t *kv.Txn) error {
				return commitBackupRecord(catalog.Wrap(t), &b, tc.decision, v.now)
			})
			if err != nil {
				t.Fatal(err)
			}
			v.read(func(tx *catalog.Txn) error {
				if _, err := tx.Backup(v.project.ID, b.ID); err != nil {
					t.Fatalf("the backup was not recorded: %v", err)
				}
				p, err := tx.Project(v.project.ID)
				if err != nil {
					return err
				}
				s, sErr := tx.Server(v.project.ID, srv.ID)
				tc.check(t, p, s, sErr)
				return nil
			})
		})
	}
}

// TestRestoreTargets: each listed disk goes to its own target, whatever
// the order; every target is checked before any is written; the backup
// is in use while it restores.
func TestRestoreTargets(t *testing.T) {
	v := newEnv(t)
	vda := v.image("a.img", 1, 24*blockSize)
	vdb := v.image("b.img", 2, 10*blockSize+7)
	srv := v.server("web1", "a.img", "b.img")
	b, err := v.backup(srv, catalog.TriggerManual, false, false)
	if err != nil {
		t.Fatal(err)
	}
	r := catalog.Restore{ID: catalog.NewID(catalog.KindRestore), Project: v.project.ID, BackupID: b.ID, Targets: []catalog.RestoreTarget{
		{Disk: "vdb", Target: filepath.Join(v.dst, "first.img")},
		{Disk: "vda", Target: filepath.Join(v.dst, "second.img")},
	}}
	var inUse, last int64
	err = v.e.RestoreTargets(context.Background(), r, func(done, total int64) {
		if v.e.InUse(b.ID) {
			inUse++
		}
		if done < last || total != int64(len(vda)+len(vdb)) {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	})
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string][]byte{"first.img": vdb, "second.img": vda} {
		got, err := os.ReadFile(filepath.Join(v.dst, target))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s does not hold its disk: %v", target, err)
		}
	}
	if inUse == 0 || v.e.InUse(b.ID) {
		t.Fatalf("in use during the restore %d times, after %v", inUse, v.e.InUse(b.ID))
	}

	cases := []struct {
		name   string
		change func(r *catalog.Restore, b *catalog.Backup)
		want   error
		msg    string
	}{
		{"no such disk", func(r *catalog.Restore, b *catalog.Backup) { r.Targets[1].Disk = "vdz" }, catalog.ErrInvalid, "no disk vdz"},
		{"target outside the grant", func(r *catalog.Restore, b *catalog.Backup) {
			r.Targets[1].Target = filepath.Join(v.src, "x.img")
		}, access.ErrDenied, "access.projects.p1.target_dirs"},
		{"relative target", func(r *catalog.Restore, b *catalog.Backup) { r.Targets[1].Target = "x.img" }, catalog.ErrInvalid, "absolute path"},
		// The disks are written at once: a full target refuses the
		// restore before any disk is written, wherever it is listed.
		{"target not empty", func(r *catalog.Restore, b *catalog.Backup) {
			r.Targets[0], r.Targets[1] = r.Targets[1], r.Targets[0]
			r.Targets[0].Target = filepath.Join(v.dst, "second.img")
		}, restore.ErrTargetNotEmpty, "not empty"},
		{"target not empty, listed last", func(r *catalog.Restore, b *catalog.Backup) {
			r.Targets[1].Target = filepath.Join(v.dst, "second.img")
		}, restore.ErrTargetNotEmpty, "not empty"},
		{"backup being deleted", func(r *catalog.Restore, b *catalog.Backup) { b.Status = catalog.StatusDeleting }, catalog.ErrConflict, "is deleting"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := r
			r.Targets = []catalog.RestoreTarget{
				{Disk: "vdb", Target: filepath.Join(v.dst, tc.name+"-1.img")},
				{Disk: "vda", Target: filepath.Join(v.dst, tc.name+"-2.img")},
			}
			bb := b
			tc.change(&r, &bb)
			if err := v.cat.Update(func(tx *catalog.Txn) error { return tx.PutBackup(bb) }); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { v.cat.Update(func(tx *catalog.Txn) error { return tx.PutBackup(b) }) })
			err := v.e.RestoreTargets(context.Background(), r, nil)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("%v, want %v with %q", err, tc.want, tc.msg)
			}
			for _, tg := range r.Targets {
				if filepath.Base(tg.Target) == "second.img" {
					continue // there before
				}
				if _, err := os.Stat(tg.Target); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("target %s was written although the restore was refused: %v", tg.Target, err)
				}
			}
			if v.e.InUse(b.ID) {
				t.Fatal("a refused restore keeps the backup in use")
			}
		})
	}
}

// TestAcquire: in-use counting per backup; a release func counts once.
func TestAcquire(t *testing.T) {
	var e Engine
	r1 := e.Acquire("bk-1")
	r2 := e.Acquire("bk-1")
	if !e.InUse("bk-1") || e.InUse("bk-2") {
		t.Fatal("in use after acquire")
	}
	r1()
	r1()
	if !e.InUse("bk-1") {
		t.Fatal("a second release of the same user freed the backup")
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); e.Acquire("bk-2")() }()
	}
	wg.Wait()
	r2()
	if e.InUse("bk-1") || e.InUse("bk-2") {
		t.Fatal("still in use after every release")
	}
}

// TestCheckNamed: the request-time checks of host paths a caller names.
func TestCheckNamed(t *testing.T) {
	v := newEnv(t)
	v.image("a.img", 1, blockSize)
	if err := os.WriteFile(filepath.Join(v.dst, "outside.img"), make([]byte, blockSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(v.dst, "outside.img"), filepath.Join(v.src, "link.img")); err != nil {
		t.Fatal(err)
	}
	p1 := access.Caller{Project: "p1"}
	admin := access.Caller{Admin: true}
	cases := []struct {
		name string
		call func() error
		want error // nil: allowed
		msg  string
	}{
		{"source in the grant", func() error {
			_, _, err := v.e.CheckSource(context.Background(), p1, filepath.Join(v.src, "a.img"))
			return err
		}, nil, ""},
		{"source size", func() error {
			_, size, err := v.e.CheckSource(context.Background(), p1, filepath.Join(v.src, "a.img"))
			if err == nil && size != blockSize {
				return errors.New("wrong size")
			}
			return err
		}, nil, ""},
		{"source outside the grant", func() error {
			_, _, err := v.e.CheckSource(context.Background(), p1, filepath.Join(v.dst, "a.img"))
			return err
		}, access.ErrDenied, "source_dirs"},
		{"source missing outside the grant says no more than denied", func() error {
			_, _, err := v.e.CheckSource(context.Background(), p1, "/nonexistent/x.img")
			return err
		}, access.ErrDenied, "source_dirs"},
		{"source is a directory", func() error { _, _, err := v.e.CheckSource(context.Background(), admin, v.dst); return err }, catalog.ErrInvalid, "directory"},
		{"relative source", func() error { _, _, err := v.e.CheckSource(context.Background(), admin, "a.img"); return err }, catalog.ErrInvalid, "absolute path"},
		{"source resolving outside the grant", func() error {
			_, _, err := v.e.CheckSource(context.Background(), p1, filepath.Join(v.src, "link.img"))
			return err
		}, access.ErrDenied, "resolves to"},
		{"store is nobody's", func() error { _, err := v.e.CheckTarget(admin, filepath.Join(v.store.Dir(), "x")); return err }, access.ErrDenied, "appliance's own data"},
		{"target in the grant", func() error { _, err := v.e.CheckTarget(p1, filepath.Join(v.dst, "new.img")); return err }, nil, ""},
		{"target in a missing directory", func() error { _, err := v.e.CheckTarget(p1, filepath.Join(v.dst, "no", "new.img")); return err }, catalog.ErrInvalid, "restore target"},
		{"mount path outside the grant", func() error { _, err := v.e.CheckMountPath(p1, filepath.Join(v.dst, "mnt")); return err }, access.ErrDenied, "mount_dirs"},
		{"nbd host not listed", func() error {
			_, _, err := v.e.CheckSource(context.Background(), p1, "nbd://192.0.2.1:10809/x")
			return err
		}, access.ErrDenied, "nbd_hosts"},
		{"bad nbd uri", func() error { _, _, err := v.e.CheckSource(context.Background(), admin, "nbd://"); return err }, catalog.ErrInvalid, "disk source"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("%v, want %v with %q", err, tc.want, tc.msg)
			}
		})
	}
	var none Engine
	if _, err := none.CheckTarget(admin, filepath.Join(v.dst, "x.img")); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("an engine without access rules allowed a path: %v", err)
	}
}
