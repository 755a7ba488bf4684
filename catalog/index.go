package catalog

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Indexes. Each indexed kind lists, in one function below, the index
// entries and counters an object contributes. put and del keep them in
// step with the object in the same transaction; Check verifies that they
// agree; EnsureIndexes builds them for a catalog written before they
// existed. Adding a kind (or an index) is a line in kinds, a function
// here, and a bump of indexVersion so that existing catalogs rebuild.
//
// An entry's key is c/i/<index>/<field>/.../<object id> and its value is
// empty unless a reader needs more than the id (the mount index carries
// what a directory listing shows). Fields are escaped (escField), so a
// prefix of whole fields selects exactly the entries with those fields.
// Time fields sort as text (timeField), oldest first; listings that
// show the newest first read them backwards.

// indexVersion changes whenever an index or counter definition changes;
// a catalog whose marker differs rebuilds its indexes at start.
const indexVersion = "2"

// Index names.
const (
	ixProjectName  = "project-name"  // name / id
	ixTokenHash    = "token-hash"    // hash / id, live tokens only
	ixTokenProject = "token-project" // project ("" admin) / id
	ixServerName   = "server-name"   // project / name / id
	ixServerPolicy = "server-policy" // policy / id
	ixPolicyName   = "policy-name"   // project / name / id
	ixBackupName   = "backup-name"   // project / name / id
	ixBackupTime   = "backup-time"   // project / created / id
	ixBackupServer = "backup-server" // server / created / id
	ixBackupFlag   = "backup-flag"   // damaged|error / project / id
	ixMount        = "mount"         // project / server name / backup name / id → MountEntry
	ixMountTime    = "mount-time"    // project / server name / created / id → server id
	ixJobTime      = "job-time"      // created / id
	ixJobProject   = "job-project"   // project / created / id
	ixJobKind      = "job-kind"      // kind / created / id → state and end (retention)
	ixJobActive    = "job-active"    // project / id, queued or running
	ixJobFailed    = "job-failed"    // project / ended / id
	ixRestoreTime  = "restore-time"  // project / created / id
	// Replication (replication.go).
	ixRemoteName         = "remote-name"         // project / name / id
	ixReplicationName    = "replication-name"    // project / name / id
	ixReplicationRemote  = "replication-remote"  // remote / id
	ixReplicaStateRemote = "replicastate-remote" // remote / id
)

// Counter groups.
const (
	grpBackups = "backups" // per project: see BackupStats
	grpJobs    = "jobs"    // kind/state → number of jobs kept
)

type kindDef struct {
	fromRaw   func([]byte) (*indexer, error)
	fromValue func(any) *indexer
}

// indexed declares a kind whose objects of type T contribute what f adds.
func indexed[T any](f func(T, *indexer)) kindDef {
	return kindDef{
		fromRaw: func(b []byte) (*indexer, error) {
			var v T
			if err := json.Unmarshal(b, &v); err != nil {
				return nil, err
			}
			ix := newIndexer()
			f(v, ix)
			return ix, nil
		},
		fromValue: func(v any) *indexer {
			ix := newIndexer()
			f(v.(T), ix)
			return ix
		},
	}
}

// kinds are the indexed kinds. Kinds not listed (exports, mounts,
// scheduler state) stay small and are read whole.
var kinds = map[string]kindDef{
	KindProject: indexed(func(p Project, ix *indexer) {
		ix.entry(nil, ixProjectName, p.Name, p.ID)
	}),
	KindToken: indexed(func(t Token, ix *indexer) {
		if !t.Revoked {
			ix.entry(nil, ixTokenHash, t.Hash, t.ID)
		}
		ix.entry(nil, ixTokenProject, t.Project, t.ID)
	}),
	KindServer: indexed(func(s Server, ix *indexer) {
		ix.entry(nil, ixServerName, s.Project, s.Name, s.ID)
		if s.PolicyID != "" {
			ix.entry(nil, ixServerPolicy, s.PolicyID, s.ID)
		}
	}),
	KindPolicy: indexed(func(p Policy, ix *indexer) {
		ix.entry(nil, ixPolicyName, p.Project, p.Name, p.ID)
	}),
	KindBackup: indexed(indexBackup),
	KindJob:    indexed(indexJob),
	KindRestore: indexed(func(r Restore, ix *indexer) {
		ix.entry(nil, ixRestoreTime, r.Project, timeField(r.Created), r.ID)
	}),
	KindRemote: indexed(func(r Remote, ix *indexer) {
		ix.entry(nil, ixRemoteName, r.Project, r.Name, r.ID)
	}),
	KindReplication: indexed(func(r Replication, ix *indexer) {
		ix.entry(nil, ixReplicationName, r.Project, r.Name, r.ID)
		ix.entry(nil, ixReplicationRemote, r.RemoteID, r.ID)
	}),
	KindReplicaState: indexed(func(s ReplicaState, ix *indexer) {
		ix.entry(nil, ixReplicaStateRemote, s.RemoteID, s.ID)
	}),
}

func indexBackup(b Backup, ix *indexer) {
	created := timeField(b.Created)
	ix.entry(nil, ixBackupName, b.Project, b.Name, b.ID)
	ix.entry(nil, ixBackupTime, b.Project, created, b.ID)
	ix.entry(nil, ixBackupServer, b.ServerID, created, b.ID)
	if b.Damaged {
		ix.entry(nil, ixBackupFlag, "damaged", b.Project, b.ID)
	}
	if b.Status == StatusError {
		ix.entry(nil, ixBackupFlag, "error", b.Project, b.ID)
	}
	if e, ok := MountEntryOf(b); ok {
		val, _ := json.Marshal(e)
		ix.entry(val, ixMount, b.Project, b.ServerName, b.Name, b.ID)
		ix.entry([]byte(b.ServerID), ixMountTime, b.Project, b.ServerName, created, b.ID)
	}
	g := grpBackups + "/" + escField(b.Project)
	ix.count(g, "backups", 1)
	ix.count(g, "status:"+b.Status, 1)
	if b.Damaged {
		ix.count(g, "damaged", 1)
	}
	for _, d := range b.Disks {
		ix.count(g, "logical_bytes", d.Size)
		ix.count(g, "added_bytes", d.NewBytes)
		ix.count(g, "data_blocks", d.Blocks)
	}
}

func indexJob(j Job, ix *indexer) {
	created := timeField(j.Created)
	ix.entry(nil, ixJobTime, created, j.ID)
	ix.entry(nil, ixJobProject, j.Project, created, j.ID)
	ix.entry(jobKindValue(j), ixJobKind, j.Kind, created, j.ID)
	if !j.Finished() {
		ix.entry(nil, ixJobActive, j.Project, j.ID)
	}
	if j.State == JobFailed {
		ix.entry(nil, ixJobFailed, j.Project, timeField(j.Ended), j.ID)
	}
	ix.count(grpJobs, j.Kind+"/"+j.State, 1)
}

// indexer collects the entries and counts of one object.
type indexer struct {
	entries map[string][]byte
	counts  map[string]map[string]int64
}

func newIndexer() *indexer {
	return &indexer{entries: map[string][]byte{}, counts: map[string]map[string]int64{}}
}

func (ix *indexer) entry(val []byte, index string, fields ...string) {
	if val == nil {
		val = []byte{}
	}
	ix.entries[string(ixKey(index, fields...))] = val
}

func (ix *indexer) count(group, field string, n int64) {
	if ix.counts[group] == nil {
		ix.counts[group] = map[string]int64{}
	}
	ix.counts[group][field] += n
}

const indexRoot = "c/i/"

// ixKey is the key of an index entry.
func ixKey(index string, fields ...string) []byte {
	var b strings.Builder
	b.WriteString(indexRoot)
	b.WriteString(index)
	for _, f := range fields {
		b.WriteByte('/')
		b.WriteString(escField(f))
	}
	return []byte(b.String())
}

// ixPrefix selects the entries of index whose first fields are fields.
func ixPrefix(index string, fields ...string) []byte { return append(ixKey(index, fields...), '/') }

// escField escapes the field separator, the escape character and control
// bytes, so that no field can end or extend another.
func escField(s string) string {
	if !strings.ContainsFunc(s, needsEscape) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsEscape(rune(c)) || c >= 0x80 {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func needsEscape(r rune) bool { return r == '/' || r == '%' || r < 0x20 || r >= 0x7f }

func unesc(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitFields splits the part of an index key after its index name.
func splitFields(s string) []string {
	fs := strings.Split(s, "/")
	for i := range fs {
		fs[i] = unesc(fs[i])
	}
	return fs
}

// timeLayout has a fixed width, so that times sort as text.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

func timeField(t time.Time) string { return t.UTC().Format(timeLayout) }

// MountEntry is an available Enhanced backup as the FUSE tree shows it:
// a directory per backup, a file per disk.
type MountEntry struct {
	ID       string      `json:"id"`
	Name     string      `json:"-"`
	ServerID string      `json:"server_id"`
	Created  time.Time   `json:"created"`
	Disks    []MountDisk `json:"disks"`
}

// MountDisk is a disk image in the FUSE tree.
type MountDisk struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}
