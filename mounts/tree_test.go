package mounts

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/access"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/fusefs"
	"csbs/internal/testenv"
)

// memDisks serves each disk as bytes derived from its backup and name,
// or from a file when one is set; it counts open disks.
type memDisks struct {
	mu    sync.Mutex
	open  int
	files map[string]string // backup id → image file
}

type memImage struct {
	io.ReaderAt
	size int64
}

func (v memImage) Size() int64 { return v.size }

func diskBytes(b catalog.Backup, disk string, size int64) []byte {
	return bytes.Repeat([]byte(b.ID+"/"+disk+";"), int(size)/len(b.ID+disk+";")+2)[:size]
}

func (m *memDisks) OpenDisk(b catalog.Backup, disk string) (fusefs.Image, func(), error) {
	for _, d := range b.Disks {
		if d.Name != disk {
			continue
		}
		m.mu.Lock()
		m.open++
		path := m.files[b.ID]
		m.mu.Unlock()
		release := func() {
			m.mu.Lock()
			m.open--
			m.mu.Unlock()
		}
		if path != "" {
			f, err := os.Open(path)
			if err != nil {
				release()
				return nil, nil, err
			}
			return memImage{f, d.Size}, func() { f.Close(); release() }, nil
		}
		return memImage{bytes.NewReader(diskBytes(b, disk, d.Size)), d.Size}, release, nil
	}
	return nil, nil, catalog.ErrNotFound
}

func (m *memDisks) opened() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open
}

// allowUnder lets every caller mount below one directory.
type allowUnder string

func (a allowUnder) Caller(project string, byAdmin bool) (access.Caller, error) {
	return access.Caller{Admin: byAdmin, Project: project}, nil
}

func (a allowUnder) CheckMountPath(_ access.Caller, path string) (string, error) {
	path = filepath.Clean(path)
	if !strings.HasPrefix(path, string(a)+"/") {
		return "", fmt.Errorf("%w: %s is outside %s", access.ErrDenied, path, a)
	}
	return path, nil
}

func (a allowUnder) CheckMountReal(c access.Caller, path, real string) error {
	_, err := a.CheckMountPath(c, real)
	return err
}

type env struct {
	dir   string
	cat   *catalog.Catalog
	disks *memDisks
	mgr   *Manager
	now   time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	s, err := blockstore.Open(filepath.Join(dir, "store"), blockstore.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog.New(s.KV(), catalog.Options{})
	if _, err := cat.EnsureIndexes(); err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, cat: cat, disks: &memDisks{files: map[string]string{}}, now: time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)}
	e.mgr = NewManager(Config{Catalog: cat, Disks: e.disks, Access: allowUnder(dir), DataDir: filepath.Join(dir, "data")})
	t.Cleanup(func() {
		e.mgr.Shutdown()
		if err := cat.Check(); err != nil {
			t.Error(err)
		}
		s.Close()
	})
	return e
}

func (e *env) project(t *testing.T, name string) catalog.Project {
	t.Helper()
	var p catalog.Project
	if err := e.cat.Update(func(tx *catalog.Txn) (err error) { p, err = tx.CreateProject(name, e.now); return err }); err != nil {
		t.Fatal(err)
	}
	return p
}

// backups writes n backups of a project spread over servers, in
// transactions of a few hundred.
func (e *env) backups(t *testing.T, project string, servers, n int, typ, prefix string) []catalog.Backup {
	t.Helper()
	var out []catalog.Backup
	for i := range n {
		b := catalog.Backup{ID: catalog.NewID(catalog.KindBackup), Project: project, ServerID: fmt.Sprintf("srv-%012d", i%servers),
			ServerName: fmt.Sprintf("s%02d", i%servers), Name: fmt.Sprintf("%s%04d", prefix, i), Created: e.now.Add(time.Duration(i) * time.Minute),
			Status: catalog.StatusAvailable, Type: typ, Disks: []catalog.BackupDisk{{Name: "vda", MapID: "m", Size: 4096 + int64(i)}}}
		if i%5 == 0 {
			b.Disks = append(b.Disks, catalog.BackupDisk{Name: "vdb", MapID: "m", Size: 8192})
		}
		out = append(out, b)
	}
	for i := 0; i < len(out); i += 300 {
		err := e.cat.Update(func(tx *catalog.Txn) error {
			for _, b := range out[i:min(i+300, len(out))] {
				if err := tx.PutBackup(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// expected is the tree the catalog should show: path → size (-1 for a
// directory), for the Enhanced available backups of the named projects.
func (e *env) expected(t *testing.T, projects ...string) map[string]int64 {
	t.Helper()
	want := map[string]int64{}
	err := e.cat.View(func(tx *catalog.Txn) error {
		bs, err := tx.AllBackups()
		for _, b := range bs {
			p, err := tx.Project(b.Project)
			if err != nil {
				return err
			}
			if !slices.Contains(projects, p.Name) || b.Type != catalog.TypeEnhanced || b.Status != catalog.StatusAvailable {
				continue
			}
			want[p.Name], want[p.Name+"/"+b.ServerName], want[p.Name+"/"+b.ServerName+"/"+b.Name] = -1, -1, -1
			for _, d := range b.Disks {
				want[p.Name+"/"+b.ServerName+"/"+b.Name+"/"+d.Name+".img"] = d.Size
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// walk is `ls -lR`: every directory read, every entry stat'ed.
func walk(t *testing.T, root string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	var rec func(rel string)
	rec = func(rel string) {
		des, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			t.Fatalf("read dir %s: %v", rel, err)
		}
		for _, de := range des {
			p := filepath.Join(rel, de.Name())
			fi, err := os.Stat(filepath.Join(root, p))
			if err != nil {
				t.Fatalf("stat %s: %v", p, err)
			}
			if fi.IsDir() {
				got[p] = -1
				rec(p)
			} else {
				got[p] = fi.Size()
			}
		}
	}
	rec("")
	return got
}

func diff(got, want map[string]int64) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok || g != want[k] {
			out = append(out, fmt.Sprintf("want %s (%d), got %d %v", k, want[k], g, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("... %d more", len(out)-10))
	}
	return strings.Join(out, "\n")
}

// waitTree polls until the mount shows want (changes reach it through
// the catalog watch, asynchronously).
func waitTree(t *testing.T, root string, want map[string]int64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := diff(walk(t, root), want)
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the mount differs from the catalog:\n%s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) reads() catalog.ReadStats { return e.cat.ReadStats() }

// TestTreeFollowsTheCatalog mounts a project with 1500 backups (Enhanced
// and Common, over 30 servers) next to another project, and checks that:
// the tree shows exactly the available Enhanced backups; `ls -lR` reads
// the catalog's index once per directory and no backup record; a second
// walk and a lookup in a listed directory read nothing; a stat of a deep
// path in a fresh mount reads a few index entries; and creations,
// deletions, a failed backup and a new project show up without
// remounting, although the kernel keeps entries for 30 s (only the
// invalidation can make them show at once).
func TestTreeFollowsTheCatalog(t *testing.T) {
	testenv.NeedFUSE(t)
	e := newEnv(t)
	p1 := e.project(t, "p1")
	p2 := e.project(t, "p2")
	bs := e.backups(t, p1.ID, 30, 1200, catalog.TypeEnhanced, "b")
	e.backups(t, p1.ID, 30, 300, catalog.TypeCommon, "c")
	e.backups(t, p2.ID, 3, 20, catalog.TypeEnhanced, "b")

	mnt := filepath.Join(e.dir, "mnt")
	rec, err := e.mgr.Mount(catalog.MountRecord{Path: mnt, Project: p1.ID})
	if err != nil {
		t.Fatal(err)
	}
	want := e.expected(t, "p1")
	before := e.reads()
	got := walk(t, mnt)
	after := e.reads()
	if d := diff(got, want); d != "" {
		t.Fatalf("the mount differs from the catalog:\n%s", d)
	}
	entries := int64(len(want))
	// Records: the root lists the two projects, and p1 is looked up.
	if o, ix := after.Objects-before.Objects, after.IndexEntries-before.IndexEntries; o > 3 || ix > 2*entries {
		t.Fatalf("ls -lR of %d entries read %d records and %d index entries; want at most 3 (the projects) and %d", entries, o, ix, 2*entries)
	}
	before = e.reads()
	if d := diff(walk(t, mnt), want); d != "" {
		t.Fatalf("second walk:\n%s", d)
	}
	if r := e.reads(); r != before {
		t.Fatalf("a second ls -lR read the catalog: %+v then %+v", before, r)
	}

	// Contents, and the backup in use while open.
	img := filepath.Join(mnt, "p1", bs[7].ServerName, bs[7].Name, "vda.img")
	data, err := os.ReadFile(img)
	if err != nil || !bytes.Equal(data, diskBytes(bs[7], "vda", bs[7].Disks[0].Size)) {
		t.Fatalf("image contents: %v", err)
	}

	// A lookup in a fresh mount reads index entries for that path only.
	other := filepath.Join(e.dir, "other")
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: other, Project: p1.ID}); err != nil {
		t.Fatal(err)
	}
	before = e.reads()
	if fi, err := os.Stat(filepath.Join(other, "p1", bs[1000].ServerName, bs[1000].Name, "vdb.img")); err != nil || fi.Size() != 8192 {
		t.Fatalf("stat in a fresh mount: %v", err)
	}
	if r := e.reads(); r.Objects-before.Objects > 1 || r.IndexEntries-before.IndexEntries > 8 {
		t.Fatalf("a deep stat in a fresh mount read %d records and %d index entries", r.Objects-before.Objects, r.IndexEntries-before.IndexEntries)
	}

	// Changes: new backups in a listed server directory and in a new
	// server, deletions, a backup that fails, another project's backup.
	e.backups(t, p1.ID, 1, 3, catalog.TypeEnhanced, "new")            // server s00
	fresh := e.backups(t, p1.ID, 1, 1, catalog.TypeEnhanced, "fresh") // s00 too
	err = e.cat.Update(func(tx *catalog.Txn) error {
		nb := fresh[0]
		nb.ID, nb.ServerID, nb.ServerName, nb.Name = catalog.NewID(catalog.KindBackup), "srv-new", "brand-new", "first"
		if err := tx.PutBackup(nb); err != nil {
			return err
		}
		for _, b := range bs[:40] {
			if err := tx.DeleteBackup(b); err != nil {
				return err
			}
		}
		failed := bs[50]
		failed.Status = catalog.StatusError
		return tx.PutBackup(failed)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.backups(t, p2.ID, 1, 1, catalog.TypeEnhanced, "p2new")
	waitTree(t, mnt, e.expected(t, "p1"), "after creates and deletes")

	// Every backup of a server deleted: its directory goes.
	err = e.cat.Update(func(tx *catalog.Txn) error {
		for _, b := range bs {
			if b.ServerName == "s29" {
				if err := tx.DeleteBackup(b); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitTree(t, mnt, e.expected(t, "p1"), "after a server's last backup went")
	if _, err := os.Stat(filepath.Join(mnt, "p1", "s29")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("server directory without backups: %v", err)
	}
	if err := e.mgr.Unmount(p1.ID, rec.Path); err != nil {
		t.Fatal(err)
	}
	if n := e.disks.opened(); n != 0 {
		t.Fatalf("%d disks left open after unmount", n)
	}
}

// TestWholeTree: the unnarrowed tree (fuse.mountpoint) shows every
// project; a project created later appears, and a narrowed mount shows
// one server or one backup only.
func TestWholeTree(t *testing.T) {
	testenv.NeedFUSE(t)
	e := newEnv(t)
	p1 := e.project(t, "p1")
	bs := e.backups(t, p1.ID, 4, 40, catalog.TypeEnhanced, "b")
	mp := filepath.Join(e.dir, "all")
	e.mgr.cfg.Mountpoint = mp
	e.mgr.Recover()
	waitTree(t, mp, e.expected(t, "p1", "default"), "whole tree")
	p2 := e.project(t, "p2")
	e.backups(t, p2.ID, 2, 3, catalog.TypeEnhanced, "x")
	want := e.expected(t, "p1", "p2")
	waitTree(t, mp, want, "a new project")

	srvMnt := filepath.Join(e.dir, "srv")
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: srvMnt, Project: p1.ID, Server: bs[1].ServerID}); err != nil {
		t.Fatal(err)
	}
	for p := range want {
		if !strings.HasPrefix(p, "p1/"+bs[1].ServerName) && p != "p1" {
			delete(want, p)
		}
	}
	waitTree(t, srvMnt, want, "a mount of one server")

	bkMnt := filepath.Join(e.dir, "bk")
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: bkMnt, Project: p1.ID, Backup: bs[5].ID}); err != nil {
		t.Fatal(err)
	}
	one := map[string]int64{"p1": -1, "p1/" + bs[5].ServerName: -1, "p1/" + bs[5].ServerName + "/" + bs[5].Name: -1,
		"p1/" + bs[5].ServerName + "/" + bs[5].Name + "/vda.img": bs[5].Disks[0].Size, "p1/" + bs[5].ServerName + "/" + bs[5].Name + "/vdb.img": 8192}
	waitTree(t, bkMnt, one, "a mount of one backup")
	if got := e.mgr.List(p1.ID); len(got) != 2 {
		t.Fatalf("mounts of p1: %+v", got)
	}
}

// TestMountRecords: a mount is recorded, refused outside the allowed
// directories and on a non-empty directory, comes back after a restart
// (Recover on a new manager), and goes with its record on unmount.
func TestMountRecords(t *testing.T) {
	testenv.NeedFUSE(t)
	e := newEnv(t)
	p1 := e.project(t, "p1")
	e.backups(t, p1.ID, 2, 4, catalog.TypeEnhanced, "b")
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: "/tmp/elsewhere", Project: p1.ID}); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("mount outside the allowed directory: %v", err)
	}
	full := filepath.Join(e.dir, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: full, Project: p1.ID}); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("mount on a non-empty directory: %v", err)
	}
	mnt := filepath.Join(e.dir, "mnt")
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: mnt, Project: p1.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.Mount(catalog.MountRecord{Path: mnt, Project: p1.ID}); !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("second mount at the same path: %v", err)
	}
	want := e.expected(t, "p1")
	waitTree(t, mnt, want, "mounted")
	e.mgr.Shutdown()
	if _, err := os.Stat(filepath.Join(mnt, "p1")); err == nil {
		t.Fatal("still mounted after shutdown")
	}
	e.mgr = NewManager(e.mgr.cfg)
	e.mgr.Recover()
	waitTree(t, mnt, want, "after a restart")
	if err := e.mgr.Unmount("prj-other", mnt); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("another project unmounted: %v", err)
	}
	if err := e.mgr.Unmount(p1.ID, mnt); err != nil {
		t.Fatal(err)
	}
	err := e.cat.View(func(tx *catalog.Txn) error {
		recs, err := tx.MountRecords()
		if len(recs) != 0 {
			t.Errorf("records left: %+v", recs)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
