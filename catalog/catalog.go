package catalog

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// ErrNotFound means no object with that id or name exists in the caller's
// project. The API maps it to 404 and never says whether the object exists
// in another project.
var ErrNotFound = errors.New("not found")

// ErrConflict means the request clashes with existing state (a duplicate
// name, a server already bound, an object in use). The API maps it to 409.
var ErrConflict = errors.New("conflict")

func notFoundf(format string, a ...any) error {
	return fmt.Errorf("%s %w", fmt.Sprintf(format, a...), ErrNotFound)
}

func conflictf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConflict, fmt.Sprintf(format, a...))
}

// Object kinds, which are also key prefixes (c/<kind>/<id>) and pick the
// id prefix of NewID.
const (
	KindProject = "project"
	KindToken   = "token"
	KindServer  = "server"
	KindPolicy  = "policy"
	KindBackup  = "backup"
	KindJob     = "job"
	KindRestore = "restore"
	// Replication (replication.go).
	KindRemote      = "remote"
	KindReplication = "replication"
)

var idPrefix = map[string]string{
	KindProject: "prj-", KindToken: "tok-", KindServer: "srv-", KindPolicy: "pol-",
	KindBackup: "bk-", KindJob: "job-", KindRestore: "rst-",
	KindRemote: "rmt-", KindReplication: "rep-",
}

// Catalog persists the CSBS model in the store's Badger database under the
// c/ prefix, so that a backup's record and its block maps commit in one
// transaction. It is safe for concurrent use (Badger transactions detect
// conflicting writes; Update retries them).
//
// Every write that Update or Release acknowledges is durable: Badger runs
// with SyncWrites=false for ingest speed, so the catalog calls DB.Sync
// after each write transaction (a revoked token must stay revoked after a
// power loss).
type Catalog struct {
	db    *badger.DB
	space func(WriteClass) error
	reads readCounters

	foldMu  sync.Mutex
	pending map[string]int // counter group → deltas written since its last fold
}

// WriteClass tells the free-space check what a write transaction does.
// Badger maps its memtable and value-log files into memory; a write to a
// mapped page of a full file system is SIGBUS, not an error. So every
// transaction with writes asks the check before it commits, which
// refuses with ENOSPC while free space is below what the class must
// leave.
type WriteClass int

const (
	// WriteGrow adds to the catalog or changes a setting: new projects,
	// tokens, servers, policies and backup jobs, bindings, protection.
	// It keeps the whole free-space reserve (store.min_free).
	WriteGrow WriteClass = iota
	// WriteRelease removes objects, revokes tokens, or records the
	// progress and end of work admitted earlier (job and restore states,
	// GC, retention, scrub and restore jobs, export and mount records).
	// It may use the upper half of the reserve: refusing it would leave
	// a full disk with no way out (no backup rm, no gc, no revocation) and
	// jobs that look alive forever, and such writes are a few hundred
	// bytes each, bounded by the work admitted before.
	WriteRelease
)

// Options configure a Catalog.
type Options struct {
	// Space, when set, is asked before a transaction with writes
	// commits, and returns an error wrapping syscall.ENOSPC (saying free
	// space, reserve and what to do) when the write must not happen.
	// Transactions that only read are never refused. The daemon passes
	// the store's free-space check.
	Space func(WriteClass) error
}

// New returns a catalog on the store's database (blockstore.Store.KV).
// A catalog written by an older csbs needs EnsureIndexes before use.
func New(db *kv.DB, opts Options) *Catalog {
	return &Catalog{db: db.Badger(), space: opts.Space, pending: map[string]int{}}
}

// IsID reports whether s has the form NewID gives ids of kind.
func IsID(kind, s string) bool {
	prefix, ok := idPrefix[kind]
	if !ok || len(s) != len(prefix)+12 || s[:len(prefix)] != prefix {
		return false
	}
	for _, c := range s[len(prefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// NewID returns a fresh id for an object kind, e.g. "srv-3f9a1c2b7d4e".
func NewID(kind string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return idPrefix[kind] + hex.EncodeToString(b[:])
}

// Txn is a catalog view of one Badger transaction, for changes that must
// commit together (a backup record with its maps, a server with its
// policy binding).
type Txn struct {
	t *badger.Txn
	// wrote: the transaction has writes to commit (set by put and del,
	// and by Badger, which hands out the raw transaction).
	wrote bool
	// reads counts what the transaction reads (nil for Wrap).
	reads *readCounters
	// touched: counter groups with deltas written or seen, for folding.
	touched map[string]int
}

// Wrap gives catalog access to a transaction opened elsewhere, such as the
// one blockstore.Commit hands to its callback. The caller checks space
// (CheckSpace) and syncs; blockstore.Commit syncs.
func Wrap(t *kv.Txn) *Txn { return &Txn{t: t.Badger()} }

// View runs fn in a read-only transaction. Reads need no free space.
func (c *Catalog) View(fn func(*Txn) error) error {
	var touched map[string]int
	err := c.db.View(func(t *badger.Txn) error {
		tx := &Txn{t: t, reads: &c.reads}
		err := fn(tx)
		touched = tx.touched
		return err
	})
	c.afterCommit(touched)
	return err
}

// Update runs fn in a read-write transaction of class WriteGrow,
// retrying on conflicts, and makes it durable before returning.
func (c *Catalog) Update(fn func(*Txn) error) error { return c.update(WriteGrow, fn) }

// Release is Update for writes of class WriteRelease: removals,
// revocations, and the progress and end of admitted work.
func (c *Catalog) Release(fn func(*Txn) error) error { return c.update(WriteRelease, fn) }

// CheckSpace asks the free-space check whether a write of class w may
// happen now (nil when the catalog has no check).
func (c *Catalog) CheckSpace(w WriteClass) error {
	if c.space == nil {
		return nil
	}
	return c.space(w)
}

// update runs fn and, if it wrote anything, asks the space check before
// the commit (a transaction that only reads passes on a full disk: the
// daemon must start and answer there) and syncs after it.
func (c *Catalog) update(w WriteClass, fn func(*Txn) error) error {
	for range 10 {
		wrote := false
		var touched map[string]int
		err := c.db.Update(func(t *badger.Txn) error {
			tx := &Txn{t: t, reads: &c.reads}
			if err := fn(tx); err != nil {
				return err
			}
			touched = tx.touched
			if wrote = tx.wrote; wrote {
				return c.CheckSpace(w)
			}
			return nil
		})
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		if !wrote {
			c.afterCommit(touched)
			return nil
		}
		if err := c.db.Sync(); err != nil {
			return fmt.Errorf("catalog: make the write durable: %w", err)
		}
		c.afterCommit(touched)
		return nil
	}
	return fmt.Errorf("catalog update: too many conflicting writers")
}

// --- scheduler state ---

// KindSchedState keys the scheduler's per-policy state.
const KindSchedState = "schedstate"

// SchedState is what the scheduler remembers of a policy across restarts.
type SchedState struct {
	PolicyID string `json:"policy_id"`
	// Last is the latest execution time already handled.
	Last time.Time `json:"last"`
	// Fingerprint of the schedule fields when Last was set; a changed
	// schedule restarts from "now" instead of catching up.
	Fingerprint string `json:"fingerprint"`
}

// SchedState returns a policy's scheduler state (zero if none).
func (tx *Txn) SchedState(policyID string) (SchedState, error) {
	st, err := get[SchedState](tx, KindSchedState, policyID)
	if errors.Is(err, ErrNotFound) {
		return SchedState{PolicyID: policyID}, nil
	}
	return st, err
}

// PutSchedState writes a policy's scheduler state.
func (tx *Txn) PutSchedState(st SchedState) error { return put(tx, KindSchedState, st.PolicyID, st) }

// DeleteSchedState forgets a policy's scheduler state.
func (tx *Txn) DeleteSchedState(policyID string) error { return del(tx, KindSchedState, policyID) }

// KV returns the underlying transaction, for writes of other packages
// (block map headers) that must commit with catalog changes.
func (tx *Txn) KV() *kv.Txn {
	tx.wrote = true
	return kv.NewTxn(tx.t)
}

// --- NBD exports of attached backups ---

// KindExport keys attached-backup exports, restored at daemon start.
const KindExport = "export"

// ExportRecord is an attached backup disk.
type ExportRecord struct {
	Name     string    `json:"name"`
	Project  string    `json:"project"`
	BackupID string    `json:"backup_id"`
	Disk     string    `json:"disk"`
	Created  time.Time `json:"created"`
}

// ExportRecords lists every attached export.
func (tx *Txn) ExportRecords() ([]ExportRecord, error) {
	return list[ExportRecord](tx, KindExport, nil)
}

// PutExportRecord writes an export record.
func (tx *Txn) PutExportRecord(e ExportRecord) error { return put(tx, KindExport, e.Name, e) }

// DeleteExportRecord removes an export record.
func (tx *Txn) DeleteExportRecord(name string) error { return del(tx, KindExport, name) }

// --- FUSE and browse mounts ---

// KindMount keys mounts, so that a restarted daemon cleans and restores them.
const KindMount = "mount"

// MountRecord is a FUSE mount (narrowed to a project, server or backup) or
// a browse mount (a backup disk loop-mounted read-only).
type MountRecord struct {
	Path     string `json:"path"`
	Project  string `json:"project"`
	Server   string `json:"server_id,omitempty"`
	Backup   string `json:"backup_id,omitempty"`
	Disk     string `json:"disk,omitempty"`
	Browse   bool   `json:"browse,omitempty"`
	Internal string `json:"internal,omitempty"` // FUSE mount behind a browse mount
	// ByAdmin: the admin token made the mount; a restart mounts it again
	// only if that caller may still use the path.
	ByAdmin bool `json:"by_admin,omitempty"`
}

// MountRecords lists every recorded mount.
func (tx *Txn) MountRecords() ([]MountRecord, error) { return list[MountRecord](tx, KindMount, nil) }

// PutMountRecord records a mount.
func (tx *Txn) PutMountRecord(m MountRecord) error {
	return put(tx, KindMount, strings.ReplaceAll(m.Path, "/", "|"), m)
}

// DeleteMountRecord forgets a mount.
func (tx *Txn) DeleteMountRecord(path string) error {
	return del(tx, KindMount, strings.ReplaceAll(path, "/", "|"))
}
