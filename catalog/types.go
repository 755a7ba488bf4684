package catalog

import (
	"time"
)

// Project groups and isolates resources.
type Project struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// IREnabledAt is when Instant Restore was enabled for the project (by a
	// manual full backup with --enable-instant-restore); zero if never.
	IREnabledAt time.Time `json:"ir_enabled_at,omitzero"`
}

// IREnabled reports whether Instant Restore is enabled for the project.
func (p Project) IREnabled() bool { return !p.IREnabledAt.IsZero() }

// Token is an API credential. Only the SHA-256 of the secret is stored.
type Token struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Project string    `json:"project"` // project id; "" for an admin token
	Hash    string    `json:"hash"`
	Created time.Time `json:"created"`
	Revoked bool      `json:"revoked"`
	// Replication marks a token another appliance uses to pull the
	// project's backups: it may only read them through /v1/replication
	// and is refused everywhere else.
	Replication bool `json:"replication,omitempty"`
}

// Disk is one disk of a server.
type Disk struct {
	Name   string `json:"name"`   // vda, vdb, ...
	Source string `json:"source"` // image path, device path or NBD URI
	Size   int64  `json:"size"`   // bytes, as seen when the disk was added or last backed up
	// LastBackup is the id of the newest backup that saved this disk.
	// Changed-block tracking uses only that backup as a parent: once it is
	// deleted, a dirty bitmap covering changes since it says nothing about
	// an older backup.
	LastBackup string `json:"last_backup,omitempty"`
	// ByAdmin: the admin token added the disk, so its source is the
	// admin's grant; otherwise every backup checks it against the
	// project's host access (access.source_dirs). Set by the API from
	// the caller's token, never from a request.
	ByAdmin bool `json:"by_admin,omitempty"`
}

// Server is a cloud server (ECS) whose disks are backed up.
type Server struct {
	ID       string    `json:"id"`
	Project  string    `json:"project"`
	Name     string    `json:"name"`
	AZ       string    `json:"availability_zone"`
	Disks    []Disk    `json:"disks"`
	PolicyID string    `json:"policy_id,omitempty"`
	Created  time.Time `json:"created"`
	// HadAutoBackup is set once an automatic backup of the server succeeded.
	HadAutoBackup bool `json:"had_auto_backup"`
	// ManualFullAfterIR is set once a manual full backup of the server
	// succeeded after Instant Restore was enabled for its project.
	ManualFullAfterIR bool `json:"manual_full_after_ir"`
}

// Disk returns the named disk.
func (s Server) Disk(name string) (Disk, bool) {
	for _, d := range s.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return Disk{}, false
}

// Period kinds of a policy.
const (
	PeriodDays     = "days"
	PeriodWeekdays = "weekdays"
)

// Policy is a backup policy: when to back up bound servers and how long to
// keep their automatic backups.
type Policy struct {
	ID       string    `json:"id"`
	Project  string    `json:"project"`
	Name     string    `json:"name"`
	Enabled  bool      `json:"enabled"`
	Times    []string  `json:"times"`                // HH:MM, sorted
	Period   string    `json:"period"`               // days | weekdays
	EveryN   int       `json:"every_days,omitempty"` // with PeriodDays
	Weekdays []string  `json:"weekdays,omitempty"`   // mon..sun, with PeriodWeekdays
	Timezone string    `json:"timezone"`             // IANA name
	Created  time.Time `json:"created"`
	// Retention: MaxBackups and RetentionDays are -1 when unset (as the
	// CSBS API writes it); both unset keeps backups forever.
	MaxBackups    int `json:"max_backups"`
	RetentionDays int `json:"retention_days"`
	KeepDaily     int `json:"keep_daily"`
	KeepWeekly    int `json:"keep_weekly"`
	KeepMonthly   int `json:"keep_monthly"`
	KeepYearly    int `json:"keep_yearly"`
}

// HasLongTerm reports whether long-term retention is set.
func (p Policy) HasLongTerm() bool {
	return p.KeepDaily+p.KeepWeekly+p.KeepMonthly+p.KeepYearly > 0
}

// Backup status values.
const (
	StatusCreating  = "creating"
	StatusAvailable = "available"
	StatusError     = "error"
	StatusDeleting  = "deleting"
)

// Backup types.
const (
	TypeCommon   = "common"
	TypeEnhanced = "enhanced"
)

// Backup triggers.
const (
	TriggerManual = "manual"
	TriggerAuto   = "auto"
)

// BackupDisk is one disk of a backup: its block map and sizes.
type BackupDisk struct {
	Name     string `json:"name"`
	MapID    string `json:"map_id"`
	Size     int64  `json:"size"`
	NewBytes int64  `json:"new_bytes"` // bytes this backup added to the store
	Blocks   int64  `json:"data_blocks"`
	// ReadBytes is what the backup read from the source (holes and, with
	// changed-block tracking, unchanged blocks are not read).
	ReadBytes int64 `json:"read_bytes"`
	// Bitmap is the dirty bitmap that tracks the disk's changes since
	// this backup: created by csbs at this backup's point in time (a live
	// VM), or the one the NBD source names (dirty-bitmap=NAME).
	Bitmap string `json:"dirty_bitmap,omitempty"`
	// ChangedFrom is the backup whose block map supplied every block the
	// bitmap did not mark changed; empty when the whole disk was read,
	// and then FullRead says why (for sources that can track changes).
	ChangedFrom string `json:"changed_from,omitempty"`
	FullRead    string `json:"full_read,omitempty"`
}

// Backup is a point-in-time copy of all disks of one server.
type Backup struct {
	ID         string       `json:"id"`
	Project    string       `json:"project"`
	ServerID   string       `json:"server_id"`
	ServerName string       `json:"server_name"`
	Name       string       `json:"name"`
	Created    time.Time    `json:"created"`
	Status     string       `json:"status"`
	Type       string       `json:"type"`
	Trigger    string       `json:"trigger"`
	Full       bool         `json:"full"`
	PolicyID   string       `json:"policy_id,omitempty"`
	Protected  bool         `json:"protected"`
	Damaged    bool         `json:"damaged,omitempty"`
	Disks      []BackupDisk `json:"disks"`
	// TypeReason explains why the backup has its type (for a Common
	// backup: why, and how to get an Enhanced one).
	TypeReason string `json:"type_reason"`
	// Replica is set on a backup copied here from another appliance
	// (see replication.go); nil for a backup made here.
	Replica *ReplicaOrigin `json:"replica,omitempty"`
	// Consistency of a live VM backup: "fs-consistent" (the guest agent
	// froze the file systems) or "crash-consistent"; empty for other
	// sources.
	Consistency string `json:"consistency,omitempty"`
	// Note carries remarks from the backup (full reads, no guest agent).
	Note string `json:"note,omitempty"`
}

// Size is the sum of the disk sizes.
func (b Backup) Size() int64 {
	var n int64
	for _, d := range b.Disks {
		n += d.Size
	}
	return n
}

// Job kinds.
const (
	JobBackup    = "backup"
	JobRestore   = "restore"
	JobHydrate   = "hydrate"
	JobRetention = "retention"
	JobGC        = "gc"
	JobScrub     = "scrub"
	JobReplicate = "replicate"
)

// Job states.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
	JobCanceled  = "canceled"
	JobSkipped   = "skipped"
)

// Job is one unit of work.
type Job struct {
	ID      string    `json:"id"`
	Project string    `json:"project"`
	Kind    string    `json:"kind"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	Started time.Time `json:"started,omitzero"`
	Ended   time.Time `json:"ended,omitzero"`
	Done    int64     `json:"bytes_done"`
	Total   int64     `json:"bytes_total"`
	Error   string    `json:"error,omitempty"`
	Note    string    `json:"note,omitempty"`
	// Scheduled is the execution time an automatic job was created for; a
	// job that cannot start within the scheduler window after it is skipped.
	Scheduled time.Time `json:"scheduled,omitzero"`
	ServerID  string    `json:"server_id,omitempty"`
	PolicyID  string    `json:"policy_id,omitempty"`
	BackupID  string    `json:"backup_id,omitempty"` // the backup made or read
	// Request of a backup job.
	BackupName string `json:"backup_name,omitempty"`
	Full       bool   `json:"full,omitempty"`
	EnableIR   bool   `json:"enable_instant_restore,omitempty"`
	Trigger    string `json:"trigger,omitempty"`
	// Request of a restore job.
	RestoreID string `json:"restore_id,omitempty"`
	// Request and progress of a replication job.
	Replicate *ReplicateJob `json:"replicate,omitempty"`
	// StoreIO is what the job asked of the pack store (jobio.go).
	StoreIO *JobIO `json:"store_io,omitempty"`
}

// Finished reports whether the job reached a final state.
func (j Job) Finished() bool {
	switch j.State {
	case JobSucceeded, JobFailed, JobCanceled, JobSkipped:
		return true
	}
	return false
}

// Restore states.
const (
	RestoreRunning   = "running"
	RestorePaused    = "paused"
	RestoreSucceeded = "succeeded"
	RestoreFailed    = "failed"
	RestoreCanceled  = "canceled"
	RestoreComplete  = "complete" // instant restore hydrated, export still up
)

// RestoreTarget maps one backup disk to a target path.
type RestoreTarget struct {
	Disk   string `json:"disk"`
	Target string `json:"target"`
	Export string `json:"export,omitempty"` // NBD export name of an instant restore
	// Fresh: the target was created empty by the restore, so blocks that
	// are zero in the backup need no write.
	Fresh bool `json:"fresh,omitempty"`
}

// Restore is a restore of a backup's disks, normal or instant.
type Restore struct {
	ID       string `json:"id"`
	Project  string `json:"project"`
	BackupID string `json:"backup_id"`
	// BackupName is the backup's name when the restore started (it stays
	// after the backup is deleted).
	BackupName string          `json:"backup_name,omitempty"`
	Instant    bool            `json:"instant"`
	Force      bool            `json:"force"`
	Rate       int64           `json:"rate"`
	Targets    []RestoreTarget `json:"targets"`
	State      string          `json:"state"`
	JobID      string          `json:"job_id"`
	Created    time.Time       `json:"created"`
	Ended      time.Time       `json:"ended,omitzero"`
	Done       int64           `json:"bytes_done"`
	Total      int64           `json:"bytes_total"`
	Error      string          `json:"error,omitempty"`
	// ByAdmin: the admin token started the restore, so its targets are
	// checked under the admin's host access when they are opened (also
	// after a restart); otherwise under the project's.
	ByAdmin bool `json:"by_admin,omitempty"`
	// Live figures of an instant restore (not stored): the rate at which
	// hydration copies data (blocks it need not write excluded; the limit
	// is Rate) and the time left at the pace so far.
	RateBps    float64 `json:"rate_bytes_per_second,omitempty"`
	ETASeconds float64 `json:"eta_seconds,omitempty"`
}
