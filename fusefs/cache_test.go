package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"csbs/catalog"
	"csbs/internal/testenv"
)

// memTree is a tree held in a map (directory path → entries) that
// counts what the file system asks of it.
type memTree struct {
	mu      sync.Mutex
	dirs    map[string][]Entry
	lists   map[string]int
	lookups int
	// children: a server directory's listing carries each backup's
	// disks, as package mounts does.
	children bool
}

func newMemTree() *memTree {
	t := &memTree{dirs: map[string][]Entry{}, lists: map[string]int{}}
	t.set("", "p1")
	t.set("p1", "web", "db")
	t.set("p1/web", "b1", "b2")
	t.set("p1/db", "b3")
	for _, b := range []string{"p1/web/b1", "p1/web/b2", "p1/db/b3"} {
		t.dirs[b] = []Entry{{Name: "vda", Size: 8192}}
	}
	return t
}

func (t *memTree) set(dir string, names ...string) {
	var es []Entry
	for _, n := range names {
		es = append(es, Entry{Name: n, Mtime: time.Unix(1700000000, 0)})
	}
	t.dirs[dir] = es
}

func (t *memTree) List(_ context.Context, path []string) ([]Entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := strings.Join(path, "/")
	t.lists[key]++
	es, ok := t.dirs[key]
	if !ok {
		return nil, catalog.ErrNotFound
	}
	es = slices.Clone(es)
	if t.children && len(path) == levelBackup {
		for i := range es {
			if sub, ok := t.dirs[key+"/"+es[i].Name]; ok {
				es[i].Children = slices.Clone(sub)
			}
		}
	}
	return es, nil
}

func (t *memTree) Open(_ context.Context, path []string) (Image, func(), error) {
	return sized{bytes.NewReader(bytes.Repeat([]byte(strings.Join(path, "/")), 1000)[:8192])}, func() {}, nil
}

func (t *memTree) listed(dir string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lists[dir]
}

// lookupTree is a memTree that also finds single entries.
type lookupTree struct{ *memTree }

func (t lookupTree) Lookup(_ context.Context, path []string) (Entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lookups++
	for _, e := range t.dirs[strings.Join(path[:len(path)-1], "/")] {
		if e.Name == path[len(path)-1] {
			return e, nil
		}
	}
	return Entry{}, catalog.ErrNotFound
}

type sized struct{ *bytes.Reader }

func (s sized) Size() int64 { return s.Reader.Size() }

func mountCached(t *testing.T, tree Tree, cache bool) (*Mount, string) {
	t.Helper()
	testenv.NeedFUSE(t)
	dir := t.TempDir()
	m, err := MountTree(dir, tree, Options{Name: "test", Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return m, dir
}

func names(t *testing.T, dir string) string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return strings.Join(out, ",")
}

// TestCachedDirectories: with a cache, a directory is listed from the
// Tree once however often it is read, lookups in it ask nothing more,
// and a change shows only once Invalidate says so, at once, although the
// kernel keeps entries for 30 s.
func TestCachedDirectories(t *testing.T) {
	tree := newMemTree()
	m, dir := mountCached(t, tree, true)
	web := filepath.Join(dir, "p1", "web")
	for range 3 {
		if got := names(t, web); got != "b1,b2" {
			t.Fatalf("web lists %q", got)
		}
		for _, b := range []string{"b1", "b2"} {
			if fi, err := os.Stat(filepath.Join(web, b, "vda.img")); err != nil || fi.Size() != 8192 {
				t.Fatalf("stat %s: %v", b, err)
			}
		}
	}
	if n := tree.listed("p1/web"); n != 1 {
		t.Fatalf("p1/web listed %d times, want once", n)
	}
	tree.mu.Lock()
	tree.set("p1/web", "b2", "b4")
	tree.dirs["p1/web/b4"] = []Entry{{Name: "vda", Size: 4096}}
	tree.mu.Unlock()
	if got := names(t, web); got != "b1,b2" {
		t.Fatalf("a cached directory changed without Invalidate: %q", got)
	}
	m.Invalidate([]string{"p1", "web"}, "b1", "b4")
	if got := names(t, web); got != "b2,b4" {
		t.Fatalf("after Invalidate web lists %q", got)
	}
	if _, err := os.Stat(filepath.Join(web, "b1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a removed entry is still there after Invalidate: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(web, "b4", "vda.img")); err != nil || fi.Size() != 4096 {
		t.Fatalf("a new entry after Invalidate: %v", err)
	}
	// A name the kernel never saw: only the directory's own listing can
	// tell it (the kernel keeps listings, FOPEN_CACHE_DIR).
	tree.mu.Lock()
	tree.set("p1/web", "b2", "b4", "b5")
	tree.dirs["p1/web/b5"] = []Entry{{Name: "vda", Size: 4096}}
	tree.mu.Unlock()
	m.Invalidate([]string{"p1", "web"}, "b5")
	if got := names(t, web); got != "b2,b4,b5" {
		t.Fatalf("after a new entry web lists %q", got)
	}
	// Invalidating an entry drops what is cached below it: a backup
	// replaced under the same name shows its new disks.
	tree.mu.Lock()
	tree.dirs["p1/web/b2"] = []Entry{{Name: "vda", Size: 8192}, {Name: "vdb", Size: 512}}
	tree.mu.Unlock()
	m.Invalidate([]string{"p1", "web"}, "b2")
	if got := names(t, filepath.Join(web, "b2")); got != "vda.img,vdb.img" {
		t.Fatalf("disks of a replaced backup: %q", got)
	}
}

// TestChildrenComeWithTheirParent: entries listed with their own
// children need no List of their own; once the parent's listing is
// dropped, the children's go with it.
func TestChildrenComeWithTheirParent(t *testing.T) {
	tree := newMemTree()
	tree.children = true
	m, dir := mountCached(t, tree, true)
	web := filepath.Join(dir, "p1", "web")
	for _, b := range []string{"b1", "b2"} {
		if got := names(t, filepath.Join(web, b)); got != "vda.img" {
			t.Fatalf("%s lists %q", b, got)
		}
	}
	if n := tree.listed("p1/web/b1") + tree.listed("p1/web/b2"); n != 0 {
		t.Fatalf("backup directories listed %d times; their disks came with the server's listing", n)
	}
	tree.mu.Lock()
	tree.dirs["p1/web/b1"] = []Entry{{Name: "vdc", Size: 512}}
	tree.mu.Unlock()
	m.Invalidate([]string{"p1"}, "web")
	if got := names(t, filepath.Join(web, "b1")); got != "vdc.img" {
		t.Fatalf("after the server's listing was dropped, b1 lists %q", got)
	}
}

// TestUncached: without a cache every readdir asks the Tree.
func TestUncached(t *testing.T) {
	tree := newMemTree()
	_, dir := mountCached(t, tree, false)
	for range 3 {
		names(t, filepath.Join(dir, "p1"))
	}
	if n := tree.listed("p1"); n < 3 {
		t.Fatalf("p1 listed %d times uncached, want every time", n)
	}
}

// TestLookupWithoutListing: a Tree that finds single entries answers a
// deep stat in a fresh mount without listing any directory.
func TestLookupWithoutListing(t *testing.T) {
	tree := lookupTree{newMemTree()}
	_, dir := mountCached(t, tree, true)
	if fi, err := os.Stat(filepath.Join(dir, "p1", "db", "b3", "vda.img")); err != nil || fi.Size() != 8192 {
		t.Fatalf("stat: %v", err)
	}
	tree.mu.Lock()
	defer tree.mu.Unlock()
	if len(tree.lists) != 0 || tree.lookups != 4 {
		t.Fatalf("a deep stat listed %v and looked up %d entries; want no listing and 4 lookups", tree.lists, tree.lookups)
	}
}
