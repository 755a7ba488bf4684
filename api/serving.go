package api

import (
	"context"

	"csbs/catalog"
)

// ExportInfo describes one NBD export.
type ExportInfo struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"` // attach | instant
	BackupID    string `json:"backup_id"`
	BackupName  string `json:"backup_name"`
	Disk        string `json:"disk"`
	RestoreID   string `json:"restore_id,omitempty"`
	ReadOnly    bool   `json:"read_only"`
	Size        int64  `json:"size"`
	URI         string `json:"uri"`               // nbd+unix:// on the daemon's socket
	TCPURI      string `json:"tcp_uri,omitempty"` // nbd:// when a TCP listener is configured
	Connections int    `json:"connections"`
}

// Serving is what the API needs from the daemon's NBD side.
type Serving interface {
	Attach(ctx context.Context, b catalog.Backup, disk string) (ExportInfo, error)
	Detach(ctx context.Context, b catalog.Backup, disk string) error
	Exports(project string) []ExportInfo
	StartInstant(ctx context.Context, r catalog.Restore, b catalog.Backup) (catalog.Restore, error)
	ControlRestore(ctx context.Context, r catalog.Restore, action string) (catalog.Restore, error)
	LiveRestore(r catalog.Restore) catalog.Restore
}

// Mounter is what the API needs from the daemon's FUSE side.
type Mounter interface {
	// Mount mounts at rec.Path; rec.ByAdmin says whose host access the
	// path is checked under.
	Mount(rec catalog.MountRecord) (catalog.MountRecord, error)
	Unmount(project, path string) error
	List(project string) []catalog.MountRecord
	// Browse loop-mounts a disk of b at path; byAdmin says whose host
	// access the path is checked under (the project's otherwise).
	Browse(b catalog.Backup, disk, path string, byAdmin bool) (catalog.MountRecord, error)
	Unbrowse(project, path string) error
}
