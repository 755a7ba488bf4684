package catalog

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"time"
)

// Replication records. The destination appliance pulls backups from a
// source appliance (a remote); everything about it is recorded here, on
// the destination: the remote, the replication policies, the state of
// each remote backup's replication, and on every replica its origin. The
// source keeps nothing but the replication token it issued.

// Remote is another appliance whose backups this one pulls. Its token
// lives in a file under the data dir (0600), never in the catalog.
type Remote struct {
	ID      string `json:"id"`
	Project string `json:"project"`
	Name    string `json:"name"`
	URL     string `json:"url"` // https://host:port
	// Fingerprint is the SHA-256 of the remote's certificate (DER) as
	// openssl prints it (uppercase hex, colons); the only thing the TLS
	// connection is verified by.
	Fingerprint string    `json:"fingerprint"`
	Created     time.Time `json:"created"`
	// What the remote said about itself when it was added.
	RemoteRegion  string `json:"remote_region"`
	RemoteProject string `json:"remote_project"`
	BlockSize     int    `json:"block_size"`
	Hash          string `json:"hash"`
}

// Replication is a replication policy: at its times, pull the newest
// Last qualifying backups of each server (or of Server only) from a
// remote.
type Replication struct {
	ID       string `json:"id"`
	Project  string `json:"project"`
	Name     string `json:"name"`
	RemoteID string `json:"remote_id"`
	Server   string `json:"server,omitempty"` // the remote's server name or id; "" = every server
	Last     int    `json:"last"`             // newest N qualifying backups per server
	// Keep is how many replicas of each of the remote's servers stay
	// here: after each run, older ones (not protected, not in use) are
	// deleted. 0 keeps every replica until deleted by hand.
	Keep     int       `json:"keep,omitempty"`
	Rate     int64     `json:"rate,omitempty"` // bytes/s on the wire; 0 = unlimited
	Enabled  bool      `json:"enabled"`
	Times    []string  `json:"times"`
	Period   string    `json:"period"`
	EveryN   int       `json:"every_days,omitempty"`
	Weekdays []string  `json:"weekdays,omitempty"`
	Timezone string    `json:"timezone"`
	Created  time.Time `json:"created"`
}

// Schedule returns the policy whose run times are the replication's,
// for the schedule rules (NormalizePolicy, scheduler.NextRuns).
func (r Replication) Schedule() Policy {
	return Policy{
		ID: r.ID, Project: r.Project, Name: r.Name, Enabled: r.Enabled, Times: r.Times, Period: r.Period,
		EveryN: r.EveryN, Weekdays: r.Weekdays, Timezone: r.Timezone, Created: r.Created,
	}
}

// MaxReplicationLast bounds Replication.Last.
const MaxReplicationLast = 1000

// NormalizeReplication checks a replication policy and puts it in
// canonical form; the schedule follows the backup policies' rules (times
// at least 1 h apart, every N days or weekdays, a timezone), defaulting
// to every day.
func NormalizeReplication(r *Replication) error {
	if r.Period == "" {
		r.Period, r.EveryN = PeriodDays, 1
	}
	p := r.Schedule()
	if err := NormalizePolicy(&p); err != nil {
		// The policies' rule, in the words of this object.
		msg := strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")
		return invalidf("%s", strings.Replace(msg, "policy ", "replication ", 1))
	}
	r.Times, r.Period, r.EveryN, r.Weekdays, r.Timezone = p.Times, p.Period, p.EveryN, p.Weekdays, p.Timezone
	if r.Last == 0 {
		r.Last = 1
	}
	if r.Last < 1 || r.Last > MaxReplicationLast {
		return invalidf("replication %s: --last %d: want 1..%d", r.Name, r.Last, MaxReplicationLast)
	}
	if r.Rate < 0 {
		return invalidf("replication %s: --rate %d: want bytes per second, 0 for unlimited", r.Name, r.Rate)
	}
	if r.Keep != 0 && (r.Keep < r.Last || r.Keep > MaxReplicationLast) {
		// Keeping fewer than a run copies would delete what it just
		// copied.
		return invalidf("replication %s: --keep %d: want 0 (keep every replica) or %d..%d (at least --last)", r.Name, r.Keep, r.Last, MaxReplicationLast)
	}
	return nil
}

// NormalizeRemoteURL checks a remote's URL: https://HOST:PORT with
// nothing after the port, returned in that form.
func NormalizeRemoteURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", invalidf("remote --url %q: want https://HOST:PORT (the other appliance's api.tcp_listen, with TLS)", raw)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", invalidf("remote --url %q: want https://HOST:PORT and nothing after the port", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" || port == "" {
		return "", invalidf("remote --url %q: want https://HOST:PORT with the port of the other appliance's api.tcp_listen", raw)
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// ReplicaOrigin says where a replica came from.
type ReplicaOrigin struct {
	RemoteID       string    `json:"remote_id"`
	RemoteName     string    `json:"remote_name"`
	SourceBackupID string    `json:"source_backup_id"`
	SourceServerID string    `json:"source_server_id"`
	SourceRegion   string    `json:"source_region"`
	SourceProject  string    `json:"source_project"`
	Replicated     time.Time `json:"replicated"`
}

// ReplicateJob is the request and the progress of a replication job:
// one remote backup (SourceBackupID), or a run of a replication policy
// (ReplicationID), which replicates its backups one after another.
type ReplicateJob struct {
	RemoteID         string `json:"remote_id"`
	RemoteName       string `json:"remote_name"`
	SourceBackupID   string `json:"source_backup_id,omitempty"`
	SourceBackupName string `json:"source_backup_name,omitempty"`
	ReplicationID    string `json:"replication_id,omitempty"`
	Rate             int64  `json:"rate,omitempty"` // bytes/s on the wire; 0 = unlimited
	// Progress, also while the job runs: blocks with data in the
	// backups' maps, blocks fetched from the remote, blocks not fetched
	// because this store held them, and bytes received on the wire.
	DataBlocks    int64 `json:"data_blocks"`
	BlocksFetched int64 `json:"blocks_fetched"`
	BlocksSkipped int64 `json:"blocks_skipped"`
	WireBytes     int64 `json:"wire_bytes"`
}

// Replica states of a remote backup on this appliance ("none" when there
// is no record).
const (
	ReplicaNone    = "none"
	ReplicaRunning = "running"
	ReplicaOK      = "ok"
	ReplicaFailed  = "failed"
)

// ReplicaImport is one disk of a replication in progress: the staged map
// being built in the store, kept across restarts so that a rerun goes
// on where the last one stopped.
type ReplicaImport struct {
	Disk    string `json:"disk"`
	MapID   string `json:"map_id"`
	MapDone bool   `json:"map_done"` // every segment of the map is recorded
}

// ReplicaState is what this appliance knows of one remote backup's
// replication.
type ReplicaState struct {
	ID               string          `json:"id"` // ReplicaStateID(remote, source backup)
	Project          string          `json:"project"`
	RemoteID         string          `json:"remote_id"`
	SourceBackupID   string          `json:"source_backup_id"`
	SourceBackupName string          `json:"source_backup_name"`
	SourceServerName string          `json:"source_server_name"`
	State            string          `json:"state"`
	Error            string          `json:"error,omitempty"`
	JobID            string          `json:"job_id,omitempty"`
	BackupID         string          `json:"backup_id,omitempty"` // the replica, once ok
	Imports          []ReplicaImport `json:"imports,omitempty"`
	Started          time.Time       `json:"started,omitzero"`
	Ended            time.Time       `json:"ended,omitzero"`
	BlocksFetched    int64           `json:"blocks_fetched"`
	BlocksSkipped    int64           `json:"blocks_skipped"`
	WireBytes        int64           `json:"wire_bytes"`
}

// KindReplicaState keys ReplicaState records.
const KindReplicaState = "replicastate"

// ReplicaStateID names the state of a remote backup's replication.
func ReplicaStateID(remoteID, sourceBackupID string) string { return remoteID + "." + sourceBackupID }

// --- remotes ---

// Remotes lists a project's remotes by name.
func (tx *Txn) Remotes(project string) ([]Remote, error) {
	rs, _, err := pageOf[Remote](tx, KindRemote, ixPrefix(ixRemoteName, project), false, Page{}, nil)
	return rs, err
}

// Remote finds a remote by id or name.
func (tx *Txn) Remote(project, ref string) (Remote, error) {
	return byRef(tx, KindRemote, ixRemoteName, project, ref, func(r Remote) string { return r.Project })
}

// CreateRemote adds a remote with a name unique in its project.
func (tx *Txn) CreateRemote(r Remote) (Remote, error) {
	if err := ValidateName("remote", r.Name); err != nil {
		return Remote{}, err
	}
	if _, err := tx.Remote(r.Project, r.Name); err == nil {
		return Remote{}, conflictf("remote %q exists", r.Name)
	}
	if r.ID == "" {
		r.ID = NewID(KindRemote)
	}
	return r, put(tx, KindRemote, r.ID, r)
}

// DeleteRemote removes a remote that no replication policy uses.
func (tx *Txn) DeleteRemote(r Remote) error {
	reps, _, err := pageOf[Replication](tx, KindReplication, ixPrefix(ixReplicationRemote, r.ID), false, Page{Limit: 1}, nil)
	if err != nil {
		return err
	}
	if len(reps) > 0 {
		return conflictf("remote %s is used by replication %s; remove that first (csbs replication rm %s)", r.Name, reps[0].Name, reps[0].Name)
	}
	return del(tx, KindRemote, r.ID)
}

// --- replication policies ---

// Replications lists a project's replication policies by name.
func (tx *Txn) Replications(project string) ([]Replication, error) {
	rs, _, err := pageOf[Replication](tx, KindReplication, ixPrefix(ixReplicationName, project), false, Page{}, nil)
	return rs, err
}

// AllReplications lists every project's replication policies (for the
// scheduler).
func (tx *Txn) AllReplications() ([]Replication, error) {
	return list[Replication](tx, KindReplication, nil)
}

// Replication finds a replication policy by id or name.
func (tx *Txn) Replication(project, ref string) (Replication, error) {
	return byRef(tx, KindReplication, ixReplicationName, project, ref, func(r Replication) string { return r.Project })
}

// CreateReplication validates and adds a replication policy with a
// unique name.
func (tx *Txn) CreateReplication(r Replication) (Replication, error) {
	if err := NormalizeReplication(&r); err != nil {
		return Replication{}, err
	}
	if _, err := tx.Replication(r.Project, r.Name); err == nil {
		return Replication{}, conflictf("replication %q exists", r.Name)
	}
	if _, err := tx.Remote(r.Project, r.RemoteID); err != nil {
		return Replication{}, err
	}
	r.ID = NewID(KindReplication)
	return r, put(tx, KindReplication, r.ID, r)
}

// DeleteReplication removes a replication policy and its schedule state.
func (tx *Txn) DeleteReplication(r Replication) error {
	if err := tx.DeleteSchedState(r.ID); err != nil {
		return err
	}
	return del(tx, KindReplication, r.ID)
}

// --- replica states ---

// ReplicaState returns the state of a remote backup's replication; a
// record with State ReplicaNone when there is none.
func (tx *Txn) ReplicaState(project, remoteID, sourceBackupID string) (ReplicaState, error) {
	id := ReplicaStateID(remoteID, sourceBackupID)
	st, err := get[ReplicaState](tx, KindReplicaState, id)
	if errors.Is(err, ErrNotFound) || (err == nil && st.Project != project) {
		return ReplicaState{ID: id, Project: project, RemoteID: remoteID, SourceBackupID: sourceBackupID, State: ReplicaNone}, nil
	}
	return st, err
}

// ReplicaStates lists the replica states of a remote ("" = of every
// remote of every project, for recovery at start).
func (tx *Txn) ReplicaStates(remoteID string) ([]ReplicaState, error) {
	if remoteID == "" {
		return list[ReplicaState](tx, KindReplicaState, nil)
	}
	sts, _, err := pageOf[ReplicaState](tx, KindReplicaState, ixPrefix(ixReplicaStateRemote, remoteID), false, Page{}, nil)
	return sts, err
}

// PutReplicaState writes a replica state.
func (tx *Txn) PutReplicaState(st ReplicaState) error { return put(tx, KindReplicaState, st.ID, st) }

// DeleteReplicaState removes a replica state.
func (tx *Txn) DeleteReplicaState(st ReplicaState) error { return del(tx, KindReplicaState, st.ID) }

// CreateReplicationToken stores a replication token for a project (see
// Token.Replication) and returns it with its secret.
func (tx *Txn) CreateReplicationToken(project, name string, now time.Time) (Token, string, error) {
	if project == "" {
		return Token{}, "", invalidf("a replication token belongs to one project")
	}
	t, secret, err := tx.CreateToken(project, name, now)
	if err != nil {
		return t, secret, err
	}
	t.Replication = true
	return t, secret, tx.PutToken(t)
}
