package daemon

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/hydrate"
	"csbs/instant"
	"csbs/internal/durable"
	"csbs/nbd"
)

// serving owns the NBD exports: attached backups (read-only) and the
// exports of instant restores (writable, hydrating; their lifecycle is
// package instant's). It implements api.Serving, nbd.Exports and
// instant.Exports.
type serving struct {
	d       *Daemon
	srv     *nbd.ExportServer
	instant *instant.Manager

	// nameKey makes export names unguessable when NBD is on TCP (nil:
	// unix socket only, where the socket's mode is the access control).
	nameKey []byte

	mu      sync.Mutex
	exports map[string]*served
}

type served struct {
	exp     *nbd.Export
	info    api.ExportInfo
	project string
	closer  io.Closer
	release func()
	vol     *blockstore.Volume // attached backups: for the read cache's figures
}

var (
	_ api.Serving     = (*serving)(nil)
	_ nbd.Exports     = (*serving)(nil)
	_ instant.Exports = (*serving)(nil)

	_ nbd.WritableDevice = (*hydrate.Device)(nil)
	_ nbd.Zeroer         = (*hydrate.Device)(nil)
	_ nbd.Extenter       = (*hydrate.Device)(nil)
	_ nbd.Trimmer        = (*hydrate.Device)(nil)
	_ nbd.Cacher         = (*hydrate.Device)(nil)
	_ nbd.CachedReader   = (*hydrate.Device)(nil)
)

func newServing(d *Daemon) *serving {
	s := &serving{d: d, exports: map[string]*served{}}
	s.srv = &nbd.ExportServer{Exports: s, Log: d.log, AllowList: true, MaxConnsPerExport: 64, Memory: d.store.Budget(), MaxConnMemory: d.size.InflightBytes / 4}
	// Read cache files are unlinked when made; one left by a crash between
	// creating and unlinking it is removed here.
	stale, _ := filepath.Glob(filepath.Join(s.cacheDir(), "*.rcache"))
	for _, f := range stale {
		os.Remove(f)
	}
	s.instant = instant.New(instant.Options{
		Catalog: instant.CatalogOf(d.cat), Store: d.store, Exports: s, Jobs: d.runner,
		Dir:         filepath.Join(d.cfg.DataDir, "restores"),
		DefaultRate: int64(d.cfg.Restore.DefaultRate),
		TargetGuard: func(project string, byAdmin bool) (func(string) error, error) {
			c, err := d.engine.Caller(project, byAdmin)
			if err != nil {
				return nil, err
			}
			return d.engine.TargetGuard(c), nil
		},
		Acquire:    d.engine.Acquire,
		Workers:    d.store.Workers(),
		Budget:     d.store.Budget(),
		OnHydrated: func(n int64) { d.metrics.HydrationBytes.Add(float64(n)) },
		Now:        d.clock.Now,
		Log:        d.log,
	})
	return s
}

// cacheDir holds the attached exports' read cache files.
func (s *serving) cacheDir() string { return filepath.Join(s.d.cfg.DataDir, "cache") }

// readCacheBytes is what the attached exports' read cache files hold.
func (s *serving) readCacheBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, e := range s.exports {
		if e.vol != nil {
			n += e.vol.ReadCacheStats().Bytes
		}
	}
	return n
}

// nbdNameKeyFile holds the key that derives export names' secret part.
const nbdNameKeyFile = "nbd-names.key"

// enableSecretNames is called when NBD listens on TCP, where anyone who
// reaches the port could otherwise open an export by guessing its name:
// names get a secret part (stable across restarts, so that clients can
// reconnect) and NBD_OPT_LIST is refused.
func (s *serving) enableSecretNames() error {
	path := filepath.Join(s.d.cfg.DataDir, nbdNameKeyFile)
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("nbd name key: %w", err)
		}
		err = durable.WriteFile(path, key, 0o600)
	}
	if err != nil {
		return fmt.Errorf("nbd name key %s: %w", path, err)
	}
	if len(key) < 16 {
		return fmt.Errorf("nbd name key %s is too short; remove it to make a new one", path)
	}
	s.nameKey = key
	s.srv.AllowList = false
	return nil
}

// exportName is the NBD name of (object, disk): "<id>-<disk>", followed
// by a secret part when NBD is reachable over TCP.
func (s *serving) exportName(id, disk string) string {
	name := id + "-" + disk
	if s.nameKey == nil {
		return name
	}
	mac := hmac.New(sha256.New, s.nameKey)
	mac.Write([]byte(name))
	return name + "-" + hex.EncodeToString(mac.Sum(nil)[:12])
}

// Lookup finds an export for the NBD server.
func (s *serving) Lookup(name string) (*nbd.Export, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exports[name]
	if !ok {
		return nil, false
	}
	return e.exp, true
}

// Names lists export names for NBD_OPT_LIST.
func (s *serving) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.exports {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (s *serving) uris(name string) (string, string) {
	sock, _ := filepath.Abs(s.d.cfg.NBD.Socket)
	u := "nbd+unix:///" + name + "?socket=" + url.QueryEscape(sock)
	tcp := ""
	if addr := s.d.cfg.NBD.TCPListen; addr != "" {
		tcp = "nbd://" + addr + "/" + name
	}
	return u, tcp
}

func (s *serving) add(e *served) {
	e.info.URI, e.info.TCPURI = s.uris(e.exp.Name)
	s.mu.Lock()
	s.exports[e.exp.Name] = e
	s.mu.Unlock()
}

// remove unregisters an export, drops its connections and frees it.
func (s *serving) remove(name string) {
	s.mu.Lock()
	e := s.exports[name]
	delete(s.exports, name)
	s.mu.Unlock()
	if e == nil {
		return
	}
	s.srv.Disconnect(name)
	if e.closer != nil {
		e.closer.Close()
	}
	if e.release != nil {
		e.release()
	}
}

// Attach exports a backup disk read-only. Attaching twice returns the
// existing export.
func (s *serving) Attach(ctx context.Context, b catalog.Backup, disk string) (api.ExportInfo, error) {
	if err := instant.CheckServable(b); err != nil {
		return api.ExportInfo{}, err
	}
	name := s.exportName(b.ID, disk)
	s.mu.Lock()
	if e, ok := s.exports[name]; ok {
		s.mu.Unlock()
		return s.view(e), nil
	}
	s.mu.Unlock()
	if err := s.attach(b, disk, name); err != nil {
		return api.ExportInfo{}, err
	}
	err := s.d.cat.Release(func(tx *catalog.Txn) error {
		return tx.PutExportRecord(catalog.ExportRecord{Name: name, Project: b.Project, BackupID: b.ID, Disk: disk, Created: s.d.clock.Now().UTC()})
	})
	if err != nil {
		s.remove(name)
		return api.ExportInfo{}, err
	}
	s.mu.Lock()
	e := s.exports[name]
	s.mu.Unlock()
	return s.view(e), nil
}

func (s *serving) attach(b catalog.Backup, disk, name string) error {
	d, id, err := instant.DiskMap(b, disk)
	if err != nil {
		return err
	}
	release := s.d.engine.Acquire(b.ID)
	vol, err := s.d.store.OpenVolume(id)
	if err != nil {
		release()
		return fmt.Errorf("backup %s disk %s: %w", b.Name, disk, err)
	}
	if n := int64(s.d.cfg.NBD.AttachCacheSize); n > 0 {
		// Without it the export still works, reading every block from
		// the store.
		if err := vol.EnableReadCache(s.cacheDir(), n); err != nil {
			s.d.log.Warn("attached export without a read cache file", "export", name, "err", err)
		}
	}
	s.add(&served{
		exp:     &nbd.Export{Name: name, Description: fmt.Sprintf("%s %s %s (read-only)", b.ServerName, b.Name, disk), Device: nbd.VolumeDevice{Volume: vol}, ReadOnly: true, PreferredBlock: uint32(s.d.store.BlockSize())},
		info:    api.ExportInfo{Name: name, Kind: "attach", BackupID: b.ID, BackupName: b.Name, Disk: d.Name, ReadOnly: true, Size: d.Size},
		project: b.Project, closer: vol, release: release, vol: vol,
	})
	return nil
}

// Detach removes an attached export.
func (s *serving) Detach(ctx context.Context, b catalog.Backup, disk string) error {
	name := s.exportName(b.ID, disk)
	s.mu.Lock()
	e, ok := s.exports[name]
	s.mu.Unlock()
	if !ok || e.info.Kind != "attach" {
		return fmt.Errorf("backup %s disk %s is not attached: %w", b.Name, disk, catalog.ErrNotFound)
	}
	s.remove(name)
	return s.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteExportRecord(name) })
}

func (s *serving) view(e *served) api.ExportInfo {
	v := e.info
	v.Connections = s.srv.Connections()[e.exp.Name]
	return v
}

// Exports lists a project's exports.
func (s *serving) Exports(project string) []api.ExportInfo {
	s.mu.Lock()
	var es []*served
	for _, e := range s.exports {
		if e.project == project {
			es = append(es, e)
		}
	}
	s.mu.Unlock()
	out := []api.ExportInfo{}
	for _, e := range es {
		out = append(out, s.view(e))
	}
	slices.SortFunc(out, func(a, b api.ExportInfo) int { return compare(a.Name, b.Name) })
	return out
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Name is the export name of a disk of an instant restore.
func (s *serving) Name(restoreID, disk string) string { return s.exportName(restoreID, disk) }

// Add serves a disk of an instant restore.
func (s *serving) Add(e instant.Export) {
	s.add(&served{
		exp:     &nbd.Export{Name: e.Name, Description: e.Description, Device: e.Device, PreferredBlock: uint32(e.BlockSize)},
		info:    api.ExportInfo{Name: e.Name, Kind: "instant", BackupID: e.BackupID, BackupName: e.BackupName, Disk: e.Disk, RestoreID: e.RestoreID, Size: e.Size},
		project: e.Project, closer: e.Closer,
	})
}

// Remove stops serving an export of an instant restore.
func (s *serving) Remove(name string) { s.remove(name) }

// StartInstant creates the writable exports of an instant restore and
// starts its hydration job. It returns at once.
func (s *serving) StartInstant(ctx context.Context, r catalog.Restore, b catalog.Backup) (catalog.Restore, error) {
	return s.instant.Start(ctx, r, b)
}

// ControlRestore pauses, resumes, finishes or cancels an instant restore.
func (s *serving) ControlRestore(ctx context.Context, r catalog.Restore, action string) (catalog.Restore, error) {
	return s.instant.Control(ctx, r, action)
}

// LiveRestore fills in the progress of an instant restore.
func (s *serving) LiveRestore(r catalog.Restore) catalog.Restore { return s.instant.Live(r) }

// recover brings back attached exports and unfinished instant restores.
func (s *serving) recover() error {
	var exps []catalog.ExportRecord
	err := s.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		exps, err = tx.ExportRecords()
		return err
	})
	if err != nil {
		return err
	}
	for _, e := range exps {
		b, err := s.backup(e.Project, e.BackupID)
		if name := s.exportName(e.BackupID, e.Disk); err == nil && name != e.Name {
			// nbd.tcp_listen changed: the name's secret part comes or goes.
			old := e.Name
			e.Name = name
			err = s.d.cat.Release(func(tx *catalog.Txn) error {
				if err := tx.DeleteExportRecord(old); err != nil {
					return err
				}
				return tx.PutExportRecord(e)
			})
		}
		if err == nil {
			err = s.attach(b, e.Disk, e.Name)
		}
		if err != nil {
			s.d.log.Warn("attached export not restored", "export", e.Name, "err", err)
			_ = s.d.cat.Release(func(tx *catalog.Txn) error { return tx.DeleteExportRecord(e.Name) })
		}
	}
	return s.instant.Recover()
}

func (s *serving) backup(project, id string) (catalog.Backup, error) {
	var b catalog.Backup
	err := s.d.cat.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(project, id)
		return err
	})
	return b, err
}

// listen opens the NBD listeners: the unix socket (0600) and, when
// configured, TCP.
func (s *serving) listen() ([]net.Listener, error) {
	if s.d.cfg.NBD.TCPListen != "" {
		if err := s.enableSecretNames(); err != nil {
			return nil, err
		}
	}
	sock := s.d.cfg.NBD.Socket
	os.Remove(sock)
	l, err := listenUnixPrivate(sock)
	if err != nil {
		return nil, fmt.Errorf("nbd listen on %s: %w", sock, err)
	}
	out := []net.Listener{l}
	if addr := s.d.cfg.NBD.TCPListen; addr != "" {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("nbd listen on %s: %w", addr, err)
		}
		out = append(out, tl)
	}
	return out, nil
}

// shutdown closes every export; call it after the runner has stopped,
// which ends the hydration jobs (the restores' states stay, to resume at
// the next start).
func (s *serving) shutdown() {
	s.instant.Shutdown()
	for _, n := range s.Names() {
		s.remove(n)
	}
}
