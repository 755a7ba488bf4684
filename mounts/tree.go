package mounts

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"csbs/catalog"
	"csbs/fusefs"
)

// Catalog is what the package needs of the catalog (*catalog.Catalog).
type Catalog interface {
	View(fn func(*catalog.Txn) error) error
	Release(fn func(*catalog.Txn) error) error
	WatchMounts(ctx context.Context, fn func([]catalog.MountChange)) error
}

// Disks opens the disks of backups for reading (the daemon: the store
// and the engine, which counts the backup as in use until release).
type Disks interface {
	OpenDisk(b catalog.Backup, disk string) (img fusefs.Image, release func(), err error)
}

// Tree is the FUSE tree of a catalog's available Enhanced backups,
// narrowed to a project, a server and a backup (ids; "" shows all).
type Tree struct {
	cat                     Catalog
	disks                   Disks
	project, server, backup string

	// cached: a catalog watch reports changes (see invalidate), so
	// projects may be kept once read.
	cached bool

	mu       sync.Mutex
	names    map[string]string          // project id → name, for invalidation
	projects map[string]catalog.Project // by name; dropped when the project changes
	nextID   int
	// The kernel releases a file handle asynchronously after a loop
	// device or a reader closes it; the mount's owner closes what is
	// left once the mount is gone, so that the backup is free at once.
	open map[int]func()
}

var (
	_ fusefs.Tree     = (*Tree)(nil)
	_ fusefs.Lookuper = (*Tree)(nil)
)

// NewTree returns the tree of cat, narrowed to project, server and
// backup ids ("" = no narrowing).
func NewTree(cat Catalog, disks Disks, project, server, backup string) *Tree {
	return &Tree{cat: cat, disks: disks, project: project, server: server, backup: backup,
		names: map[string]string{}, projects: map[string]catalog.Project{}, open: map[int]func(){}}
}

func notFound(path []string) error {
	return fmt.Errorf("%v: %w", path, catalog.ErrNotFound)
}

// projectOf resolves the project name at the top of a path within the
// narrowing. Projects are kept once read: a project's change reaches
// invalidate, which forgets it.
func (t *Tree) projectOf(tx *catalog.Txn, name string) (catalog.Project, error) {
	t.mu.Lock()
	p, ok := t.projects[name]
	t.mu.Unlock()
	if !ok {
		var err error
		p, err = tx.ProjectByName(name)
		if err != nil || p.Name != name {
			return catalog.Project{}, notFound([]string{name})
		}
	}
	if t.project != "" && p.ID != t.project {
		return catalog.Project{}, notFound([]string{name})
	}
	if !ok {
		t.mu.Lock()
		t.names[p.ID] = p.Name
		if t.cached {
			t.projects[name] = p
		}
		t.mu.Unlock()
	}
	return p, nil
}

// narrowed returns the backup the tree is narrowed to, if it is shown.
func (t *Tree) narrowed(tx *catalog.Txn, project string) (catalog.Backup, catalog.MountEntry, bool, error) {
	b, err := tx.Backup(project, t.backup)
	if errors.Is(err, catalog.ErrNotFound) {
		return b, catalog.MountEntry{}, false, nil
	}
	if err != nil {
		return b, catalog.MountEntry{}, false, err
	}
	e, ok := catalog.MountEntryOf(b)
	return b, e, ok && (t.server == "" || b.ServerID == t.server), nil
}

// List lists a directory from the catalog's indexes.
func (t *Tree) List(ctx context.Context, path []string) ([]fusefs.Entry, error) {
	var out []fusefs.Entry
	err := t.cat.View(func(tx *catalog.Txn) error {
		if len(path) == 0 {
			ps, err := tx.Projects()
			for _, p := range ps {
				if t.project == "" || t.project == p.ID {
					out = append(out, fusefs.Entry{Name: p.Name, Mtime: p.Created})
				}
			}
			return err
		}
		p, err := t.projectOf(tx, path[0])
		if err != nil {
			return err
		}
		if t.backup != "" {
			b, e, ok, err := t.narrowed(tx, p.ID)
			if err != nil || !ok {
				return err
			}
			switch {
			case len(path) == 1:
				out = append(out, fusefs.Entry{Name: b.ServerName, Mtime: e.Created})
			case len(path) == 2 && path[1] == b.ServerName:
				out = append(out, fusefs.Entry{Name: e.Name, Mtime: e.Created})
			case len(path) == 3 && path[1] == b.ServerName && path[2] == e.Name:
				out = disks(e)
			}
			return nil
		}
		switch len(path) {
		case 1:
			dirs, err := tx.MountServers(p.ID, t.server)
			for _, d := range dirs {
				out = append(out, fusefs.Entry{Name: d.Name, Mtime: d.Newest})
			}
			return err
		case 2:
			// A backup's disks come with it: a walk needs no List per
			// backup directory.
			es, err := tx.MountBackups(p.ID, path[1], t.server)
			for _, e := range es {
				out = append(out, fusefs.Entry{Name: e.Name, Mtime: e.Created, Children: disks(e)})
			}
			return err
		case 3:
			e, err := tx.MountBackup(p.ID, path[1], path[2], t.server)
			if err != nil {
				return err
			}
			out = disks(e)
		}
		return nil
	})
	if err == nil && out == nil && len(path) > 0 {
		// Only the root and a project may be empty; below, an empty
		// directory is one that went.
		if len(path) > 1 {
			err = notFound(path)
		}
	}
	return out, err
}

func disks(e catalog.MountEntry) []fusefs.Entry {
	out := make([]fusefs.Entry, 0, len(e.Disks))
	for _, d := range e.Disks {
		out = append(out, fusefs.Entry{Name: d.Name, Size: d.Size, Mtime: e.Created})
	}
	return out
}

// Lookup finds one entry from the catalog's indexes, without listing its
// directory.
func (t *Tree) Lookup(ctx context.Context, path []string) (fusefs.Entry, error) {
	if len(path) == 0 || len(path) > 4 {
		return fusefs.Entry{}, notFound(path)
	}
	if t.backup != "" {
		es, err := t.List(ctx, path[:len(path)-1])
		if err != nil {
			return fusefs.Entry{}, err
		}
		for _, e := range es {
			if e.Name == path[len(path)-1] {
				return e, nil
			}
		}
		return fusefs.Entry{}, notFound(path)
	}
	var out fusefs.Entry
	err := t.cat.View(func(tx *catalog.Txn) error {
		p, err := t.projectOf(tx, path[0])
		if err != nil {
			return err
		}
		switch len(path) {
		case 1:
			out = fusefs.Entry{Name: p.Name, Mtime: p.Created}
		case 2:
			d, err := tx.MountServer(p.ID, path[1], t.server)
			if err != nil {
				return err
			}
			out = fusefs.Entry{Name: d.Name, Mtime: d.Newest}
		default:
			e, err := tx.MountBackup(p.ID, path[1], path[2], t.server)
			if err != nil {
				return err
			}
			out = fusefs.Entry{Name: e.Name, Mtime: e.Created}
			if len(path) == 4 {
				for _, d := range disks(e) {
					if d.Name == path[3] {
						out = d
						return nil
					}
				}
				return notFound(path)
			}
		}
		return nil
	})
	return out, err
}

// Open opens a disk image for reading.
func (t *Tree) Open(ctx context.Context, path []string) (fusefs.Image, func(), error) {
	if len(path) != 4 {
		return nil, nil, notFound(path)
	}
	var b catalog.Backup
	err := t.cat.View(func(tx *catalog.Txn) error {
		p, err := t.projectOf(tx, path[0])
		if err != nil {
			return err
		}
		e, err := tx.MountBackup(p.ID, path[1], path[2], t.server)
		if err != nil {
			return err
		}
		if t.backup != "" && e.ID != t.backup {
			return notFound(path)
		}
		b, err = tx.Backup(p.ID, e.ID)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	img, release, err := t.disks.OpenDisk(b, path[3])
	if err != nil {
		return nil, nil, err
	}
	return img, t.track(release), nil
}

// track registers a closer and returns one that runs it at most once.
func (t *Tree) track(closeFn func()) func() {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := t.nextID
	t.nextID++
	var once sync.Once
	wrapped := func() {
		once.Do(func() {
			t.mu.Lock()
			delete(t.open, id)
			t.mu.Unlock()
			closeFn()
		})
	}
	t.open[id] = wrapped
	return wrapped
}

// closeAll closes every handle still open; called after unmount.
func (t *Tree) closeAll() {
	t.mu.Lock()
	var fns []func()
	for _, fn := range t.open {
		fns = append(fns, fn)
	}
	t.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// invalidate turns catalog changes into invalidations of m.
func (t *Tree) invalidate(m *fusefs.Mount, changes []catalog.MountChange) {
	for _, ch := range changes {
		if t.project != "" && ch.Project != t.project {
			continue
		}
		if ch.ProjectName != "" {
			t.mu.Lock()
			delete(t.projects, ch.ProjectName)
			delete(t.names, ch.Project)
			t.mu.Unlock()
			m.Invalidate(nil, ch.ProjectName)
			continue
		}
		name, err := t.projectName(ch.Project)
		if err != nil {
			continue // gone, or never shown: nothing cached of it
		}
		m.Invalidate([]string{name}, ch.Server)
		m.Invalidate([]string{name, ch.Server}, ch.Backup)
	}
}

func (t *Tree) projectName(id string) (string, error) {
	t.mu.Lock()
	name, ok := t.names[id]
	t.mu.Unlock()
	if ok {
		return name, nil
	}
	err := t.cat.View(func(tx *catalog.Txn) error {
		p, err := tx.Project(id)
		name = p.Name
		return err
	})
	return name, err
}
