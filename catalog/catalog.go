package catalog

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
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
)

var idPrefix = map[string]string{
	KindProject: "prj-", KindToken: "tok-", KindServer: "srv-", KindPolicy: "pol-",
	KindBackup: "bk-", KindJob: "job-", KindRestore: "rst-",
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

// New returns a catalog on db.
// New returns a catalog on the store's database (blockstore.Store.KV).
func New(db *kv.DB, opts Options) *Catalog { return &Catalog{db: db.Badger(), space: opts.Space} }

// NewID returns a fresh id for an object kind, e.g. "srv-3f9a1c2b7d4e".
func NewID(kind string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return idPrefix[kind] + hex.EncodeToString(b[:])
}

func key(kind, id string) []byte { return []byte("c/" + kind + "/" + id) }

// Txn is a catalog view of one Badger transaction, for changes that must
// commit together (a backup record with its maps, a server with its
// policy binding).
type Txn struct {
	t *badger.Txn
	// wrote: the transaction has writes to commit (set by put and del,
	// and by Badger, which hands out the raw transaction).
	wrote bool
}

// Wrap gives catalog access to a transaction opened elsewhere, such as the
// one blockstore.Commit hands to its callback. The caller checks space
// (CheckSpace) and syncs; blockstore.Commit syncs.
func Wrap(t *kv.Txn) *Txn { return &Txn{t: t.Badger()} }

// View runs fn in a read-only transaction. Reads need no free space.
func (c *Catalog) View(fn func(*Txn) error) error {
	return c.db.View(func(t *badger.Txn) error { return fn(&Txn{t: t}) })
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
		err := c.db.Update(func(t *badger.Txn) error {
			tx := &Txn{t: t}
			if err := fn(tx); err != nil {
				return err
			}
			if wrote = tx.wrote; wrote {
				return c.CheckSpace(w)
			}
			return nil
		})
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		if err != nil || !wrote {
			return err
		}
		if err := c.db.Sync(); err != nil {
			return fmt.Errorf("catalog: make the write durable: %w", err)
		}
		return nil
	}
	return fmt.Errorf("catalog update: too many conflicting writers")
}

func get[T any](tx *Txn, kind, id string) (T, error) {
	var v T
	item, err := tx.t.Get(key(kind, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return v, notFoundf("%s %s", kind, id)
	}
	if err != nil {
		return v, fmt.Errorf("read %s %s: %w", kind, id, err)
	}
	err = item.Value(func(b []byte) error { return json.Unmarshal(b, &v) })
	if err != nil {
		return v, fmt.Errorf("decode %s %s: %w", kind, id, err)
	}
	return v, nil
}

func put(tx *Txn, kind, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", kind, id, err)
	}
	tx.wrote = true
	if err := tx.t.Set(key(kind, id), b); err != nil {
		return fmt.Errorf("write %s %s: %w", kind, id, err)
	}
	return nil
}

func del(tx *Txn, kind, id string) error {
	tx.wrote = true
	if err := tx.t.Delete(key(kind, id)); err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	return nil
}

// list returns every object of a kind for which keep returns true.
func list[T any](tx *Txn, kind string, keep func(T) bool) ([]T, error) {
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: key(kind, ""), PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	var out []T
	for it.Rewind(); it.Valid(); it.Next() {
		var v T
		if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err != nil {
			return nil, fmt.Errorf("decode %s: %w", it.Item().Key(), err)
		}
		if keep == nil || keep(v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// --- projects ---

// DefaultProject is created at first start so that a new user can begin.
const DefaultProject = "default"

// CreateProject adds a project with a unique name.
func (tx *Txn) CreateProject(name string, now time.Time) (Project, error) {
	if err := ValidateName("project", name); err != nil {
		return Project{}, err
	}
	if _, err := tx.ProjectByName(name); err == nil {
		return Project{}, conflictf("project %q exists", name)
	}
	p := Project{ID: NewID(KindProject), Name: name, Created: now.UTC()}
	return p, put(tx, KindProject, p.ID, p)
}

// Project returns a project by id.
func (tx *Txn) Project(id string) (Project, error) { return get[Project](tx, KindProject, id) }

// ProjectByName returns a project by name or id.
func (tx *Txn) ProjectByName(ref string) (Project, error) {
	if p, err := tx.Project(ref); err == nil {
		return p, nil
	}
	ps, err := list(tx, KindProject, func(p Project) bool { return p.Name == ref })
	if err != nil {
		return Project{}, err
	}
	if len(ps) == 0 {
		return Project{}, notFoundf("project %q", ref)
	}
	return ps[0], nil
}

// Projects lists all projects by name.
func (tx *Txn) Projects() ([]Project, error) {
	ps, err := list[Project](tx, KindProject, nil)
	slices.SortFunc(ps, func(a, b Project) int { return strings.Compare(a.Name, b.Name) })
	return ps, err
}

// PutProject writes a project.
func (tx *Txn) PutProject(p Project) error { return put(tx, KindProject, p.ID, p) }

// DeleteProject removes an empty project.
func (tx *Txn) DeleteProject(p Project) error {
	if p.Name == DefaultProject {
		return conflictf("the default project cannot be removed")
	}
	servers, err := tx.Servers(p.ID)
	if err != nil {
		return err
	}
	backups, err := tx.Backups(p.ID, BackupFilter{})
	if err != nil {
		return err
	}
	policies, err := tx.Policies(p.ID)
	if err != nil {
		return err
	}
	if n := len(servers) + len(backups) + len(policies); n > 0 {
		return conflictf("project %s still has %d servers, %d policies and %d backups; remove them first", p.Name, len(servers), len(policies), len(backups))
	}
	tokens, err := tx.Tokens(p.ID)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		if err := del(tx, KindToken, t.ID); err != nil {
			return err
		}
	}
	return del(tx, KindProject, p.ID)
}

// --- tokens ---

// HashSecret returns the stored form of a token secret.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// NewSecret returns a fresh token secret.
func NewSecret() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return "csbs_" + hex.EncodeToString(b[:])
}

// CreateToken stores a token for a project ("" = admin) and returns it
// with its secret, which is not stored and cannot be shown again.
func (tx *Txn) CreateToken(project, name string, now time.Time) (Token, string, error) {
	if name == "" {
		name = "token"
	}
	if err := ValidateName("token", name); err != nil {
		return Token{}, "", err
	}
	secret := NewSecret()
	t := Token{ID: NewID(KindToken), Name: name, Project: project, Hash: HashSecret(secret), Created: now.UTC()}
	return t, secret, put(tx, KindToken, t.ID, t)
}

// TokenBySecret finds the live token with this secret.
func (tx *Txn) TokenBySecret(secret string) (Token, error) {
	h := HashSecret(secret)
	ts, err := list(tx, KindToken, func(t Token) bool { return t.Hash == h && !t.Revoked })
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, notFoundf("token")
	}
	return ts[0], nil
}

// Tokens lists a project's tokens ("" lists admin tokens).
func (tx *Txn) Tokens(project string) ([]Token, error) {
	return list(tx, KindToken, func(t Token) bool { return t.Project == project })
}

// Token returns a token by id.
func (tx *Txn) Token(id string) (Token, error) { return get[Token](tx, KindToken, id) }

// PutToken writes a token.
func (tx *Txn) PutToken(t Token) error { return put(tx, KindToken, t.ID, t) }

// --- servers ---

// Servers lists a project's servers by name.
func (tx *Txn) Servers(project string) ([]Server, error) {
	ss, err := list(tx, KindServer, func(s Server) bool { return s.Project == project })
	slices.SortFunc(ss, func(a, b Server) int { return strings.Compare(a.Name, b.Name) })
	return ss, err
}

// Server finds a server of the project by id or unique name.
func (tx *Txn) Server(project, ref string) (Server, error) {
	return byRef(tx, KindServer, project, ref, func(s Server) (string, string, string) { return s.ID, s.Project, s.Name })
}

// PutServer writes a server.
func (tx *Txn) PutServer(s Server) error { return put(tx, KindServer, s.ID, s) }

// CreateServer adds a server with a name unique in its project.
func (tx *Txn) CreateServer(s Server) (Server, error) {
	if err := ValidateName("server", s.Name); err != nil {
		return Server{}, err
	}
	if _, err := tx.Server(s.Project, s.Name); err == nil {
		return Server{}, conflictf("server %q exists", s.Name)
	}
	s.ID = NewID(KindServer)
	return s, put(tx, KindServer, s.ID, s)
}

// DeleteServer removes a server. Its backups stay (as in CSBS) until
// deleted; they keep the server's name.
func (tx *Txn) DeleteServer(s Server) error { return del(tx, KindServer, s.ID) }

// byRef looks an object up by id, then by name, within a project. A
// name shared by several objects is ambiguous.
func byRef[T any](tx *Txn, kind, project, ref string, fields func(T) (id, project, name string)) (T, error) {
	var zero T
	if strings.HasPrefix(ref, idPrefix[kind]) {
		v, err := get[T](tx, kind, ref)
		if err == nil {
			if _, p, _ := fields(v); p == project {
				return v, nil
			}
			return zero, notFoundf("%s %q", kind, ref)
		}
		if !errors.Is(err, ErrNotFound) {
			return zero, err
		}
	}
	vs, err := list(tx, kind, func(v T) bool {
		_, p, n := fields(v)
		return p == project && n == ref
	})
	if err != nil {
		return zero, err
	}
	switch len(vs) {
	case 0:
		return zero, notFoundf("%s %q", kind, ref)
	case 1:
		return vs[0], nil
	}
	return zero, conflictf("%d %ss are named %q; use the id", len(vs), kind, ref)
}

// --- policies ---

// Policies lists a project's policies by name.
func (tx *Txn) Policies(project string) ([]Policy, error) {
	ps, err := list(tx, KindPolicy, func(p Policy) bool { return p.Project == project })
	slices.SortFunc(ps, func(a, b Policy) int { return strings.Compare(a.Name, b.Name) })
	return ps, err
}

// AllPolicies lists the policies of every project (for the scheduler).
func (tx *Txn) AllPolicies() ([]Policy, error) { return list[Policy](tx, KindPolicy, nil) }

// Policy finds a policy by id or name.
func (tx *Txn) Policy(project, ref string) (Policy, error) {
	return byRef(tx, KindPolicy, project, ref, func(p Policy) (string, string, string) { return p.ID, p.Project, p.Name })
}

// CreatePolicy validates and adds a policy with a unique name.
func (tx *Txn) CreatePolicy(p Policy) (Policy, error) {
	if err := NormalizePolicy(&p); err != nil {
		return Policy{}, err
	}
	if _, err := tx.Policy(p.Project, p.Name); err == nil {
		return Policy{}, conflictf("policy %q exists", p.Name)
	}
	p.ID = NewID(KindPolicy)
	return p, put(tx, KindPolicy, p.ID, p)
}

// UpdatePolicy validates and writes a changed policy.
func (tx *Txn) UpdatePolicy(p Policy) (Policy, error) {
	if err := NormalizePolicy(&p); err != nil {
		return Policy{}, err
	}
	if other, err := tx.Policy(p.Project, p.Name); err == nil && other.ID != p.ID {
		return Policy{}, conflictf("policy %q exists", p.Name)
	}
	return p, put(tx, KindPolicy, p.ID, p)
}

// DeletePolicy removes a policy and unbinds its servers.
func (tx *Txn) DeletePolicy(p Policy) error {
	servers, err := tx.Servers(p.Project)
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.PolicyID == p.ID {
			s.PolicyID = ""
			if err := tx.PutServer(s); err != nil {
				return err
			}
		}
	}
	if err := tx.DeleteSchedState(p.ID); err != nil {
		return err
	}
	return del(tx, KindPolicy, p.ID)
}

// BoundServers lists the servers bound to a policy.
func (tx *Txn) BoundServers(p Policy) ([]Server, error) {
	ss, err := tx.Servers(p.Project)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ss, func(s Server) bool { return s.PolicyID != p.ID }), nil
}

// --- backups ---

// BackupFilter narrows Backups.
type BackupFilter struct {
	ServerID string
	Type     string
}

// Backups lists a project's backups, newest first.
func (tx *Txn) Backups(project string, f BackupFilter) ([]Backup, error) {
	bs, err := list(tx, KindBackup, func(b Backup) bool {
		return b.Project == project && (f.ServerID == "" || b.ServerID == f.ServerID) && (f.Type == "" || b.Type == f.Type)
	})
	slices.SortFunc(bs, func(a, b Backup) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return bs, err
}

// AllBackups lists the backups of every project.
func (tx *Txn) AllBackups() ([]Backup, error) { return list[Backup](tx, KindBackup, nil) }

// Backup finds a backup by id or name.
func (tx *Txn) Backup(project, ref string) (Backup, error) {
	return byRef(tx, KindBackup, project, ref, func(b Backup) (string, string, string) { return b.ID, b.Project, b.Name })
}

// PutBackup writes a backup record.
func (tx *Txn) PutBackup(b Backup) error { return put(tx, KindBackup, b.ID, b) }

// DeleteBackup removes a backup record.
func (tx *Txn) DeleteBackup(b Backup) error { return del(tx, KindBackup, b.ID) }

// BackupNameTaken reports whether a server already has a backup so named.
func (tx *Txn) BackupNameTaken(project, serverID, name string) (bool, error) {
	bs, err := list(tx, KindBackup, func(b Backup) bool {
		return b.Project == project && b.ServerID == serverID && b.Name == name
	})
	return len(bs) > 0, err
}

// GeneratedBackupName returns "manualbk_xxxx" or "autobk_xxxx" where xxxx
// is the last four hex digits of the backup id, lengthened if a backup of
// the server already has that name.
func (tx *Txn) GeneratedBackupName(project, serverID, trigger, backupID string) (string, error) {
	prefix := "manualbk_"
	if trigger == TriggerAuto {
		prefix = "autobk_"
	}
	hexID := strings.TrimPrefix(backupID, idPrefix[KindBackup])
	for n := 4; n <= len(hexID); n += 2 {
		name := prefix + hexID[len(hexID)-n:]
		taken, err := tx.BackupNameTaken(project, serverID, name)
		if err != nil {
			return "", err
		}
		if !taken {
			return name, nil
		}
	}
	return prefix + hexID, nil
}

// --- jobs ---

// Jobs lists a project's jobs ("" for every project), newest first.
func (tx *Txn) Jobs(project string) ([]Job, error) {
	js, err := list(tx, KindJob, func(j Job) bool { return project == "" || j.Project == project })
	slices.SortFunc(js, func(a, b Job) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return js, err
}

// Job returns a job of the project by id.
func (tx *Txn) Job(project, id string) (Job, error) {
	j, err := get[Job](tx, KindJob, id)
	if err != nil {
		return Job{}, err
	}
	if project != "" && j.Project != project {
		return Job{}, notFoundf("job %s", id)
	}
	return j, nil
}

// PutJob writes a job.
func (tx *Txn) PutJob(j Job) error { return put(tx, KindJob, j.ID, j) }

// DeleteJob removes a job record.
func (tx *Txn) DeleteJob(j Job) error { return del(tx, KindJob, j.ID) }

// --- restores ---

// Restores lists a project's restores ("" for all), newest first.
func (tx *Txn) Restores(project string) ([]Restore, error) {
	rs, err := list(tx, KindRestore, func(r Restore) bool { return project == "" || r.Project == project })
	slices.SortFunc(rs, func(a, b Restore) int { return b.Created.Compare(a.Created) })
	return rs, err
}

// Restore returns a restore of the project by id.
func (tx *Txn) Restore(project, id string) (Restore, error) {
	r, err := get[Restore](tx, KindRestore, id)
	if err != nil {
		return Restore{}, err
	}
	if project != "" && r.Project != project {
		return Restore{}, notFoundf("restore %s", id)
	}
	return r, nil
}

// PutRestore writes a restore.
func (tx *Txn) PutRestore(r Restore) error { return put(tx, KindRestore, r.ID, r) }

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

// --- upgrades ---

// keyHostAccessAdopted marks a catalog whose records carry ByAdmin.
var keyHostAccessAdopted = []byte("c/meta/host-access-adopted")

// AdoptLegacyHostAccess runs once per catalog: records made before csbs
// recorded who named a host path (servers' disks, restores, mounts) are
// adopted as the admin's, so that an upgrade does not stop the backups an
// operator set up. It returns a line per adopted record for the log, in
// which an admin can spot one a project token made.
func (tx *Txn) AdoptLegacyHostAccess() ([]string, error) {
	if _, err := tx.t.Get(keyHostAccessAdopted); err == nil {
		return nil, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("read catalog upgrade marker: %w", err)
	}
	var adopted []string
	servers, err := list[Server](tx, KindServer, nil)
	if err != nil {
		return nil, err
	}
	for _, s := range servers {
		changed := false
		for i := range s.Disks {
			if !s.Disks[i].ByAdmin {
				s.Disks[i].ByAdmin, changed = true, true
				adopted = append(adopted, fmt.Sprintf("server %s disk %s source %s", s.Name, s.Disks[i].Name, s.Disks[i].Source))
			}
		}
		if changed {
			if err := tx.PutServer(s); err != nil {
				return nil, err
			}
		}
	}
	restores, err := list[Restore](tx, KindRestore, nil)
	if err != nil {
		return nil, err
	}
	for _, r := range restores {
		if !r.ByAdmin {
			r.ByAdmin = true
			adopted = append(adopted, fmt.Sprintf("restore %s", r.ID))
			if err := tx.PutRestore(r); err != nil {
				return nil, err
			}
		}
	}
	mounts, err := tx.MountRecords()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if !m.ByAdmin {
			m.ByAdmin = true
			adopted = append(adopted, fmt.Sprintf("mount %s", m.Path))
			if err := tx.PutMountRecord(m); err != nil {
				return nil, err
			}
		}
	}
	if err := tx.t.Set(keyHostAccessAdopted, []byte("1")); err != nil {
		return nil, fmt.Errorf("write catalog upgrade marker: %w", err)
	}
	return adopted, nil
}
