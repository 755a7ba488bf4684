package catalog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// BackupFilter narrows Backups.
type BackupFilter struct {
	ServerID string
	Type     string
}

// Backups lists a project's backups, newest first.
func (tx *Txn) Backups(project string, f BackupFilter) ([]Backup, error) {
	bs, _, err := tx.BackupPage(project, f, Page{})
	return bs, err
}

// BackupPage lists a project's backups newest first, a page at a time.
// With a server, it reads that server's backups only; otherwise the
// project's only.
func (tx *Txn) BackupPage(project string, f BackupFilter, pg Page) ([]Backup, string, error) {
	prefix := ixPrefix(ixBackupTime, project)
	if f.ServerID != "" {
		prefix = ixPrefix(ixBackupServer, f.ServerID)
	}
	var keep func(Backup) bool
	if f.Type != "" || f.ServerID != "" {
		keep = func(b Backup) bool { return b.Project == project && (f.Type == "" || b.Type == f.Type) }
	}
	return pageOf(tx, KindBackup, prefix, true, pg, keep)
}

// AllBackups lists the backups of every project (whole-store work such
// as scrub's damage marks).
func (tx *Txn) AllBackups() ([]Backup, error) { return list[Backup](tx, KindBackup, nil) }

// FlaggedBackups lists a project's backups that scrub marked damaged
// (flag "damaged") or that are in error state (flag "error"); project ""
// lists those of every project.
func (tx *Txn) FlaggedBackups(flag, project string) ([]Backup, error) {
	prefix := ixPrefix(ixBackupFlag, flag, project)
	if project == "" {
		prefix = ixPrefix(ixBackupFlag, flag)
	}
	bs, _, err := pageOf[Backup](tx, KindBackup, prefix, false, Page{}, nil)
	return bs, err
}

// Backup flags for FlaggedBackups.
const (
	FlagDamaged = "damaged"
	FlagError   = "error"
)

// BackupByID returns a backup of any project by id (for the daemon's
// own bookkeeping; requests go through Backup, which is project-scoped).
func (tx *Txn) BackupByID(id string) (Backup, error) { return get[Backup](tx, KindBackup, id) }

// Backup finds a backup by id or name.
func (tx *Txn) Backup(project, ref string) (Backup, error) {
	return byRef(tx, KindBackup, ixBackupName, project, ref, func(b Backup) string { return b.Project })
}

// PutBackup writes a backup record.
func (tx *Txn) PutBackup(b Backup) error { return put(tx, KindBackup, b.ID, b) }

// DeleteBackup removes a backup record.
func (tx *Txn) DeleteBackup(b Backup) error { return del(tx, KindBackup, b.ID) }

// BackupNameTaken reports whether a server already has a backup so named.
func (tx *Txn) BackupNameTaken(project, serverID, name string) (bool, error) {
	bs, _, err := pageOf(tx, KindBackup, ixPrefix(ixBackupName, project, name), false, Page{Limit: 1}, func(b Backup) bool {
		return b.ServerID == serverID
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

// MountDir is a server directory of the FUSE tree: a server name with
// available Enhanced backups, and the creation time of its newest.
type MountDir struct {
	Name   string
	Newest time.Time
}

// MountServers lists the server names of a project that have available
// Enhanced backups, by name. It costs a seek or two per server name, not
// a read of the project's backups. serverID, when set, keeps that
// server only.
func (tx *Txn) MountServers(project, serverID string) ([]MountDir, error) {
	prefix := ixPrefix(ixMount, project)
	var out []MountDir
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	times := tx.t.NewIterator(badger.IteratorOptions{Prefix: ixPrefix(ixMountTime, project), Reverse: true})
	defer times.Close()
	for it.Seek(prefix); it.Valid(); {
		tx.countEntry()
		escName, _, _ := strings.Cut(string(it.Item().Key()[len(prefix):]), "/")
		name := unesc(escName)
		newest, err := tx.newestMount(times, project, name, serverID)
		if err != nil {
			return nil, err
		}
		if !newest.IsZero() {
			out = append(out, MountDir{Name: name, Newest: newest})
		}
		it.Seek(append(append(bytes.Clone(prefix), escName...), '/', 0xff))
	}
	return out, nil
}

// newestMount returns the creation time of the newest entry of server
// name server (of server serverID, when set) in a project's mount-time
// index, read with it, a reverse iterator over that index; zero if none.
func (tx *Txn) newestMount(it *badger.Iterator, project, server, serverID string) (time.Time, error) {
	prefix := ixPrefix(ixMountTime, project, server)
	for it.Seek(append(bytes.Clone(prefix), 0xff)); it.ValidForPrefix(prefix); it.Next() {
		tx.countEntry()
		item := it.Item()
		if serverID != "" {
			v, err := item.ValueCopy(nil)
			if err != nil {
				return time.Time{}, fmt.Errorf("read mount index entry %s: %w", item.Key(), err)
			}
			if string(v) != serverID {
				continue
			}
		}
		cursor := string(item.Key()[len(prefix):])
		t, err := time.Parse(timeLayout, strings.SplitN(cursor, "/", 2)[0])
		if err != nil {
			return time.Time{}, fmt.Errorf("mount index entry %s: %w", item.Key(), err)
		}
		return t, nil
	}
	return time.Time{}, nil
}

// MountBackups lists the available Enhanced backups of a server name in
// a project, by name, from the mount index alone. serverID, when set,
// keeps that server's only.
func (tx *Txn) MountBackups(project, server, serverID string) ([]MountEntry, error) {
	var out []MountEntry
	err := tx.scan(ixPrefix(ixMount, project, server), false, true, "", func(cursor, _ string, val []byte) (bool, error) {
		var e MountEntry
		if err := json.Unmarshal(val, &e); err != nil {
			return false, fmt.Errorf("decode mount index entry %s: %w", cursor, err)
		}
		e.Name = splitFields(cursor)[0]
		if serverID == "" || e.ServerID == serverID {
			out = append(out, e)
		}
		return true, nil
	})
	return out, err
}

// MountBackup finds the available Enhanced backup named name of a server
// name (the newest, if a removed server of the same name left one too).
func (tx *Txn) MountBackup(project, server, name, serverID string) (MountEntry, error) {
	var found *MountEntry
	err := tx.scan(ixPrefix(ixMount, project, server, name), false, true, "", func(cursor, _ string, val []byte) (bool, error) {
		var e MountEntry
		if err := json.Unmarshal(val, &e); err != nil {
			return false, fmt.Errorf("decode mount index entry %s: %w", cursor, err)
		}
		e.Name = name
		if (serverID == "" || e.ServerID == serverID) && (found == nil || e.Created.After(found.Created)) {
			found = &e
		}
		return true, nil
	})
	if err != nil {
		return MountEntry{}, err
	}
	if found == nil {
		return MountEntry{}, notFoundf("backup %q of server %q", name, server)
	}
	return *found, nil
}

// MountEntryOf is the entry a backup has in the FUSE tree, and whether
// it has one (available Enhanced backups only).
func MountEntryOf(b Backup) (MountEntry, bool) {
	if b.Type != TypeEnhanced || b.Status != StatusAvailable {
		return MountEntry{}, false
	}
	e := MountEntry{ID: b.ID, Name: b.Name, ServerID: b.ServerID, Created: b.Created.UTC()}
	for _, d := range b.Disks {
		e.Disks = append(e.Disks, MountDisk{Name: d.Name, Size: d.Size})
	}
	return e, true
}
