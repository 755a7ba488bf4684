package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"csbs/access"
	"csbs/catalog"
	"csbs/scheduler"
)

// CreateBackupRequest is the body of POST /v1/backups.
type CreateBackupRequest struct {
	Server   string `json:"server"`
	Name     string `json:"name,omitempty"`
	Full     bool   `json:"full,omitempty"`
	EnableIR bool   `json:"enable_instant_restore,omitempty"`
}

func (s *Service) createBackup(_ context.Context, p principal, r *http.Request) (any, error) {
	var req CreateBackupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Name != "" {
		if err := catalog.ValidateBackupName(req.Name); err != nil {
			return nil, err
		}
	}
	var job catalog.Job
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		sv, err := tx.Server(p.project.ID, req.Server)
		if err != nil {
			return err
		}
		// Refuse now what the job would refuse later.
		if _, err := catalog.DecideType(p.project, sv, catalog.BackupRequest{Trigger: catalog.TriggerManual, Full: req.Full, EnableIR: req.EnableIR}); err != nil {
			return err
		}
		if req.Name != "" {
			taken, err := tx.BackupNameTaken(p.project.ID, sv.ID, req.Name)
			if err != nil {
				return err
			}
			if taken {
				return fmt.Errorf("%w: server %s already has a backup named %q", catalog.ErrConflict, sv.Name, req.Name)
			}
		}
		job = catalog.Job{
			Project: p.project.ID, Kind: catalog.JobBackup, ServerID: sv.ID,
			BackupID: catalog.NewID(catalog.KindBackup), BackupName: req.Name,
			Full: req.Full, EnableIR: req.EnableIR, Trigger: catalog.TriggerManual,
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.Runner.Submit(job)
}

// BackupView is a backup as the API shows it.
type BackupView struct {
	catalog.Backup
	// Damaged shadows the record's field (omitted when false there) so
	// that scripts always find it.
	Damaged bool `json:"damaged"`
	// Damage says, for a damaged backup, what that means and what to do.
	Damage string `json:"damage,omitempty"`
	Size   int64  `json:"size"`
	InUse  bool   `json:"in_use"`
	// SupportLLD mirrors the CSBS API's marker of Enhanced backups.
	SupportLLD bool `json:"support_lld"`
	// Region where the backup was made: this appliance's, or for a
	// replica its source's.
	Region string `json:"region"`
}

func (s *Service) backupView(b catalog.Backup) BackupView {
	v := BackupView{Backup: b, Damaged: b.Damaged, Size: b.Size(), InUse: s.Engine.InUse(b.ID), SupportLLD: b.Type == catalog.TypeEnhanced, Region: s.Region}
	if b.Replica != nil {
		v.Region = b.Replica.SourceRegion
	}
	if b.Damaged {
		v.Damage = damageAdvice(b)
	}
	return v
}

// damageAdvice explains a backup that scrub marked damaged.
func damageAdvice(b catalog.Backup) string {
	return fmt.Sprintf("scrub found blocks of this backup damaged or missing; reading them (restore, attach, mount) fails with an I/O error, never wrong data. "+
		"To repair, back up the same data again (csbs backup create %s --wait stores those blocks anew if the server's disks still hold them) and run csbs scrub to clear the mark; "+
		"or delete the backup (csbs backup rm %s)", b.ServerName, b.ID)
}

func (s *Service) listBackups(_ context.Context, p principal, r *http.Request) (any, error) {
	q := r.URL.Query()
	f := catalog.BackupFilter{Type: q.Get("type")}
	if f.Type != "" && f.Type != catalog.TypeCommon && f.Type != catalog.TypeEnhanced {
		return nil, fmt.Errorf("%w: type %q: want common or enhanced", catalog.ErrInvalid, f.Type)
	}
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	var out []BackupView
	var next string
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		if ref := q.Get("server"); ref != "" {
			sv, err := tx.Server(p.project.ID, ref)
			if err != nil {
				return err
			}
			f.ServerID = sv.ID
		}
		bs, n, err := tx.BackupPage(p.project.ID, f, pg)
		for _, b := range bs {
			out = append(out, s.backupView(b))
		}
		next = n
		return err
	})
	return paged{nonNil(out), next}, err
}

func (s *Service) findBackup(p principal, ref string) (catalog.Backup, error) {
	var b catalog.Backup
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		b, err = tx.Backup(p.project.ID, ref)
		return err
	})
	return b, err
}

func (s *Service) showBackup(_ context.Context, p principal, r *http.Request) (any, error) {
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	return s.backupView(b), nil
}

// UpdateBackupRequest is the body of PATCH /v1/backups/{ref}.
type UpdateBackupRequest struct {
	Protected *bool `json:"protected,omitempty"`
}

func (s *Service) updateBackup(_ context.Context, p principal, r *http.Request) (any, error) {
	var req UpdateBackupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	var out catalog.Backup
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		b, err := tx.Backup(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		if req.Protected != nil {
			b.Protected = *req.Protected
		}
		out = b
		return tx.PutBackup(b)
	})
	return s.backupView(out), err
}

func (s *Service) deleteBackup(ctx context.Context, p principal, r *http.Request) (any, error) {
	force := r.URL.Query().Get("force") == "true"
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	err = s.Scheduler.DeleteBackup(ctx, b, force)
	if errors.Is(err, scheduler.ErrBackupInUse) || errors.Is(err, scheduler.ErrProtected) {
		return nil, fmt.Errorf("%w: %v", catalog.ErrConflict, err)
	}
	if err != nil {
		return nil, err
	}
	return DeletedBackup{ID: b.ID, Name: b.Name}, nil
}

// DeletedBackup is the answer of DELETE /v1/backups/{ref}.
type DeletedBackup struct {
	ID   string `json:"deleted"`
	Name string `json:"name"`
}

// StartRestoreRequest is the body of POST /v1/restores.
type StartRestoreRequest struct {
	Backup  string                  `json:"backup"`
	Targets []catalog.RestoreTarget `json:"targets"`
	Force   bool                    `json:"force,omitempty"`
	Instant bool                    `json:"instant,omitempty"`
	Rate    int64                   `json:"rate,omitempty"` // bytes/s; 0 = config default; -1 = unlimited
}

func (s *Service) startRestore(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req StartRestoreRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	b, err := s.findBackup(p, req.Backup)
	if err != nil {
		return nil, err
	}
	if b.Status != catalog.StatusAvailable {
		return nil, fmt.Errorf("%w: backup %s is %s", catalog.ErrConflict, b.Name, b.Status)
	}
	if len(req.Targets) == 0 {
		return nil, fmt.Errorf("%w: name at least one target (--disk vda=/path/to/target)", catalog.ErrInvalid)
	}
	seen := map[string]bool{}
	for i, t := range req.Targets {
		var disk *catalog.BackupDisk
		for j := range b.Disks {
			if b.Disks[j].Name == t.Disk {
				disk = &b.Disks[j]
			}
		}
		if disk == nil {
			return nil, fmt.Errorf("%w: backup %s has no disk %q", catalog.ErrInvalid, b.Name, t.Disk)
		}
		check := s.Engine.CheckTarget
		if !req.Instant {
			// Everything the job would refuse when it opens the target,
			// refused now (an instant restore opens its targets at once).
			check = func(c access.Caller, target string) (string, error) {
				return s.Engine.CheckRestoreTarget(c, target, disk.Size, req.Force)
			}
		}
		target, err := check(p.caller(), t.Target)
		if err != nil {
			return nil, err
		}
		req.Targets[i].Target = target
		if seen[t.Disk] || seen["target:"+target] {
			return nil, fmt.Errorf("%w: disk or target given twice (%s=%s)", catalog.ErrInvalid, t.Disk, t.Target)
		}
		seen[t.Disk], seen["target:"+target] = true, true
	}
	if req.Rate < -1 {
		return nil, fmt.Errorf("%w: rate %d: want bytes per second, 0 for the default or -1 for unlimited", catalog.ErrInvalid, req.Rate)
	}
	rs := catalog.Restore{
		ID: catalog.NewID(catalog.KindRestore), Project: p.project.ID, BackupID: b.ID, BackupName: b.Name, Instant: req.Instant,
		Force: req.Force, Rate: req.Rate, Targets: req.Targets, State: catalog.RestoreRunning, Created: s.now(),
		ByAdmin: p.admin,
	}
	for _, d := range b.Disks {
		if seen[d.Name] {
			rs.Total += d.Size
		}
	}
	if req.Instant {
		return s.Serving.StartInstant(ctx, rs, b)
	}
	rs.JobID = catalog.NewID(catalog.KindJob)
	if err := s.Catalog.Release(func(tx *catalog.Txn) error { return tx.PutRestore(rs) }); err != nil {
		return nil, err
	}
	if _, err := s.Runner.Submit(catalog.Job{ID: rs.JobID, Project: p.project.ID, Kind: catalog.JobRestore, BackupID: b.ID, RestoreID: rs.ID}); err != nil {
		return nil, err
	}
	return rs, nil
}

func (s *Service) listRestores(_ context.Context, p principal, r *http.Request) (any, error) {
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	var out []catalog.Restore
	var next string
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		out, next, err = tx.RestorePage(p.project.ID, pg)
		for i := range out {
			named(tx, &out[i])
		}
		return err
	})
	for i := range out {
		out[i] = s.liveRestore(out[i])
	}
	return paged{nonNil(out), next}, err
}

// named fills in the backup name of a restore recorded before restores
// kept it.
func named(tx *catalog.Txn, r *catalog.Restore) {
	if r.BackupName != "" {
		return
	}
	if b, err := tx.Backup(r.Project, r.BackupID); err == nil {
		r.BackupName = b.Name
	}
}

// liveRestore fills in the progress of a running restore from its job
// or, for an instant restore, from its hydration.
func (s *Service) liveRestore(rs catalog.Restore) catalog.Restore {
	if rs.Instant {
		return s.Serving.LiveRestore(rs)
	}
	if rs.State == catalog.RestoreRunning && rs.JobID != "" {
		if j, err := s.Runner.Job(rs.Project, rs.JobID); err == nil && j.Total > 0 {
			rs.Done, rs.Total = j.Done, j.Total
		}
	}
	return rs
}

func (s *Service) showRestore(_ context.Context, p principal, r *http.Request) (any, error) {
	var out catalog.Restore
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		out, err = tx.Restore(p.project.ID, r.PathValue("id"))
		named(tx, &out)
		return err
	})
	return s.liveRestore(out), err
}

func (s *Service) listJobs(_ context.Context, p principal, r *http.Request) (any, error) {
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	js, next, err := s.Runner.Jobs(p.project.ID, pg)
	return paged{nonNil(js), next}, err
}

func (s *Service) showJob(_ context.Context, p principal, r *http.Request) (any, error) {
	return s.Runner.Job(p.project.ID, r.PathValue("id"))
}

// waitJob blocks until the job ends or ?timeout (default 30s, at most 5m)
// passes, and returns the job; clients poll it in a loop.
func (s *Service) waitJob(ctx context.Context, p principal, r *http.Request) (any, error) {
	timeout := 30.0
	if v := r.URL.Query().Get("timeout"); v != "" {
		if _, err := fmt.Sscanf(v, "%g", &timeout); err != nil || timeout < 0 || timeout > 300 {
			return nil, fmt.Errorf("%w: timeout=%q: want 0..300 seconds", catalog.ErrInvalid, v)
		}
	}
	if _, err := s.Runner.Job(p.project.ID, r.PathValue("id")); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, secondsDuration(timeout))
	defer cancel()
	j, err := s.Runner.Wait(wctx, p.project.ID, r.PathValue("id"))
	if errors.Is(err, context.DeadlineExceeded) {
		return s.Runner.Job(p.project.ID, r.PathValue("id"))
	}
	return j, err
}

func (s *Service) cancelJob(_ context.Context, p principal, r *http.Request) (any, error) {
	return s.Runner.Cancel(p.project.ID, r.PathValue("id"))
}

// AttachRequest is the body of POST /v1/backups/{ref}/attach and detach.
type AttachRequest struct {
	Disk string `json:"disk,omitempty"` // default: every disk
}

func (s *Service) diskNames(b catalog.Backup, disk string) ([]string, error) {
	if disk != "" {
		for _, d := range b.Disks {
			if d.Name == disk {
				return []string{disk}, nil
			}
		}
		return nil, fmt.Errorf("%w: backup %s has no disk %q", catalog.ErrInvalid, b.Name, disk)
	}
	var out []string
	for _, d := range b.Disks {
		out = append(out, d.Name)
	}
	return out, nil
}

func (s *Service) attachBackup(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req AttachRequest
	if err := decodeOptional(r, &req); err != nil {
		return nil, err
	}
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	disks, err := s.diskNames(b, req.Disk)
	if err != nil {
		return nil, err
	}
	out := []ExportInfo{}
	for _, d := range disks {
		e, err := s.Serving.Attach(ctx, b, d)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (s *Service) detachBackup(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req AttachRequest
	if err := decodeOptional(r, &req); err != nil {
		return nil, err
	}
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	disks, err := s.diskNames(b, req.Disk)
	if err != nil {
		return nil, err
	}
	detached := 0
	for _, d := range disks {
		err := s.Serving.Detach(ctx, b, d)
		if err == nil {
			detached++
		} else if req.Disk != "" || !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
	}
	if detached == 0 {
		return nil, fmt.Errorf("backup %s is not attached: %w", b.Name, catalog.ErrNotFound)
	}
	return nil, nil
}

func (s *Service) listExports(_ context.Context, p principal, _ *http.Request) (any, error) {
	return s.Serving.Exports(p.project.ID), nil
}

func (s *Service) controlRestore(ctx context.Context, p principal, r *http.Request) (any, error) {
	var rs catalog.Restore
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		rs, err = tx.Restore(p.project.ID, r.PathValue("id"))
		return err
	})
	if err != nil {
		return nil, err
	}
	switch action := r.PathValue("action"); action {
	case "pause", "resume", "finish", "cancel":
		if !rs.Instant {
			if action == "cancel" && rs.JobID != "" {
				if _, err := s.Runner.Cancel(p.project.ID, rs.JobID); err != nil {
					return nil, err
				}
				return s.liveRestore(rs), nil
			}
			return nil, fmt.Errorf("%w: restore %s is a normal restore; only cancel applies (csbs job cancel %s)", catalog.ErrConflict, rs.ID, rs.JobID)
		}
		out, err := s.Serving.ControlRestore(ctx, rs, action)
		if err != nil {
			return nil, err
		}
		return s.liveRestore(out), nil
	default:
		return nil, fmt.Errorf("no restore action %q (pause, resume, finish, cancel): %w", r.PathValue("action"), catalog.ErrNotFound)
	}
}
