package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"csbs/catalog"
	"csbs/qemu"
	"csbs/scheduler"
)

// AddServerRequest is the body of POST /v1/servers.
type AddServerRequest struct {
	Name  string         `json:"name"`
	AZ    string         `json:"availability_zone"`
	Disks []catalog.Disk `json:"disks"` // name and source; size is measured
	// QMP, instead of Disks, adds every disk of the running VM behind
	// this QMP socket (as POST /v1/servers/discover lists them); QGA
	// names its guest agent socket ("" finds it, "none" skips it).
	QMP string `json:"qmp,omitempty"`
	QGA string `json:"qga,omitempty"`
}

// DiscoverRequest is the body of POST /v1/servers/discover.
type DiscoverRequest struct {
	QMP string `json:"qmp"`
	QGA string `json:"qga,omitempty"`
}

// discoverServer lists the disks of a running VM from QEMU.
func (s *Service) discoverServer(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req DiscoverRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.QMP == "" {
		return nil, fmt.Errorf("%w: name the VM's QMP socket (--qmp PATH)", catalog.ErrInvalid)
	}
	return s.Engine.DiscoverVM(ctx, p.caller(), req.QMP, req.QGA)
}

// ServerView is a server with its policy's name and what the Instant
// Restore rules make of its next backups.
type ServerView struct {
	catalog.Server
	Region     string `json:"region"`
	PolicyName string `json:"policy_name,omitempty"`
	// NextManual and NextAutomatic are the types the server's next plain
	// manual backup (no --full) and next automatic backup would get.
	NextManual    *NextBackupType `json:"next_manual_backup,omitempty"`
	NextAutomatic *NextBackupType `json:"next_automatic_backup,omitempty"`
}

// NextBackupType is a backup type the IR rules would decide, and why.
type NextBackupType struct {
	Type   string `json:"type"`
	Reason string `json:"reason"`
}

func (s *Service) addServer(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req AddServerRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := catalog.ValidateName("server", req.Name); err != nil {
		return nil, err
	}
	if req.AZ == "" {
		req.AZ = s.AZs[0]
	}
	if !slices.Contains(s.AZs, req.AZ) {
		return nil, fmt.Errorf("%w: availability zone %q is not in region %s (AZs: %s)", catalog.ErrInvalid, req.AZ, s.Region, strings.Join(s.AZs, ", "))
	}
	if req.QMP != "" {
		if len(req.Disks) > 0 {
			return nil, fmt.Errorf("%w: give either --qmp (all disks of the VM) or --disk, not both", catalog.ErrInvalid)
		}
		found, err := s.Engine.DiscoverVM(ctx, p.caller(), req.QMP, req.QGA)
		if err != nil {
			return nil, err
		}
		for _, d := range found {
			if d.Skipped == "" {
				req.Disks = append(req.Disks, catalog.Disk{Name: d.Name, Source: d.Source})
			}
		}
		if len(req.Disks) == 0 {
			return nil, fmt.Errorf("%w: the VM at %s has no disk csbs can back up (csbs server discover --qmp %s says why)", catalog.ErrInvalid, req.QMP, req.QMP)
		}
	}
	if len(req.Disks) == 0 {
		return nil, fmt.Errorf("%w: a server needs at least one disk (--disk vda=PATH)", catalog.ErrInvalid)
	}
	if len(req.Disks) > 64 {
		return nil, fmt.Errorf("%w: at most 64 disks per server", catalog.ErrInvalid)
	}
	seen := map[string]bool{}
	for i, d := range req.Disks {
		if err := catalog.ValidateDiskName(d.Name); err != nil {
			return nil, err
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("%w: disk %s given twice", catalog.ErrInvalid, d.Name)
		}
		seen[d.Name] = true
		src, size, err := s.Engine.CheckSource(ctx, p.caller(), d.Source)
		if err != nil {
			return nil, err
		}
		req.Disks[i].Source, req.Disks[i].Size = src, size
		req.Disks[i].ByAdmin = p.admin // the caller's token decides, never the request
	}
	vms := map[string]bool{}
	for _, d := range req.Disks {
		if t, err := qemu.ParseURI(d.Source); err == nil {
			vms[t.Socket] = true
		}
	}
	if len(vms) > 1 {
		return nil, fmt.Errorf("%w: the disks name %d QMP sockets; a server is one VM, and its disks are backed up at one point in time through one socket", catalog.ErrInvalid, len(vms))
	}
	var out ServerView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		sv, err := tx.CreateServer(catalog.Server{Project: p.project.ID, Name: req.Name, AZ: req.AZ, Disks: req.Disks, Created: s.now()})
		out = s.serverView(tx, sv)
		return err
	})
	return out, err
}

func (s *Service) listServers(_ context.Context, p principal, r *http.Request) (any, error) {
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	var out []ServerView
	var next string
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		ss, n, err := tx.ServerPage(p.project.ID, pg)
		if err != nil {
			return err
		}
		for _, sv := range ss {
			out = append(out, s.serverView(tx, sv))
		}
		next = n
		return nil
	})
	return paged{nonNil(out), next}, err
}

func (s *Service) serverView(tx *catalog.Txn, sv catalog.Server) ServerView {
	v := ServerView{Server: sv, Region: s.Region}
	if sv.PolicyID != "" {
		if pol, err := tx.Policy(sv.Project, sv.PolicyID); err == nil {
			v.PolicyName = pol.Name
		}
	}
	if prj, err := tx.Project(sv.Project); err == nil {
		next := func(trigger string) *NextBackupType {
			d, err := catalog.DecideType(prj, sv, catalog.BackupRequest{Trigger: trigger})
			if err != nil {
				return nil
			}
			return &NextBackupType{Type: d.Type, Reason: d.Reason}
		}
		v.NextManual, v.NextAutomatic = next(catalog.TriggerManual), next(catalog.TriggerAuto)
	}
	return v
}

func (s *Service) showServer(_ context.Context, p principal, r *http.Request) (any, error) {
	var out ServerView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		sv, err := tx.Server(p.project.ID, r.PathValue("ref"))
		out = s.serverView(tx, sv)
		return err
	})
	return out, err
}

func (s *Service) removeServer(ctx context.Context, p principal, r *http.Request) (any, error) {
	var removed catalog.Server
	err := s.Catalog.Release(func(tx *catalog.Txn) error {
		sv, err := tx.Server(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		if s.Runner.ServerBusy(sv.ID) {
			return fmt.Errorf("%w: server %s has a backup job queued or running; wait for it or cancel it", catalog.ErrConflict, sv.Name)
		}
		removed = sv
		return tx.DeleteServer(sv)
	})
	if err != nil {
		return nil, err
	}
	// A live VM keeps csbs's dirty bitmaps; nothing needs them now.
	if err := s.Engine.ForgetVM(ctx, removed); err != nil {
		s.Log.Warn("server removed; its VM keeps csbs's dirty bitmaps", "server", removed.Name, "err", err)
		return map[string]any{"removed": removed.ID, "warning": err.Error()}, nil
	}
	return nil, nil
}

func (s *Service) unbindServer(_ context.Context, p principal, r *http.Request) (any, error) {
	var out catalog.Server
	err := s.Catalog.Release(func(tx *catalog.Txn) error {
		sv, err := tx.Server(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		if sv.PolicyID == "" {
			return fmt.Errorf("%w: server %s is not bound to a policy", catalog.ErrConflict, sv.Name)
		}
		sv.PolicyID = ""
		out = sv
		return tx.PutServer(sv)
	})
	return out, err
}

// PolicyRequest is the body of POST /v1/policies and PATCH
// /v1/policies/{ref}. In a PATCH, nil fields keep their value.
type PolicyRequest struct {
	Name          *string  `json:"name,omitempty"`
	Enabled       *bool    `json:"enabled,omitempty"`
	Times         []string `json:"times,omitempty"`
	EveryDays     *int     `json:"every_days,omitempty"`
	Weekdays      []string `json:"weekdays,omitempty"`
	Timezone      *string  `json:"timezone,omitempty"`
	MaxBackups    *int     `json:"max_backups,omitempty"`
	RetentionDays *int     `json:"retention_days,omitempty"`
	KeepDaily     *int     `json:"keep_daily,omitempty"`
	KeepWeekly    *int     `json:"keep_weekly,omitempty"`
	KeepMonthly   *int     `json:"keep_monthly,omitempty"`
	KeepYearly    *int     `json:"keep_yearly,omitempty"`
}

func (req PolicyRequest) apply(p *catalog.Policy) {
	set := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	if req.Name != nil {
		p.Name = *req.Name
	}
	if req.Enabled != nil {
		p.Enabled = *req.Enabled
	}
	if req.Times != nil {
		p.Times = req.Times
	}
	if req.EveryDays != nil {
		p.Period, p.EveryN = catalog.PeriodDays, *req.EveryDays
	}
	if req.Weekdays != nil {
		p.Period, p.Weekdays = catalog.PeriodWeekdays, req.Weekdays
	}
	if req.Timezone != nil {
		p.Timezone = *req.Timezone
	}
	// Setting one retention rule clears the other: they are exclusive.
	if req.MaxBackups != nil {
		p.MaxBackups = *req.MaxBackups
		if req.RetentionDays == nil {
			p.RetentionDays = -1
		}
	}
	if req.RetentionDays != nil {
		p.RetentionDays = *req.RetentionDays
		if req.MaxBackups == nil {
			p.MaxBackups = -1
		}
	}
	set(&p.KeepDaily, req.KeepDaily)
	set(&p.KeepWeekly, req.KeepWeekly)
	set(&p.KeepMonthly, req.KeepMonthly)
	set(&p.KeepYearly, req.KeepYearly)
}

// DefaultNextRuns is how many next run times a policy's view lists unless
// asked for another number (GET ?next=N): the same after create, update
// and show.
const DefaultNextRuns = 5

// PolicyView is a policy with its next runs and bound servers.
type PolicyView struct {
	catalog.Policy
	NextRuns []time.Time `json:"next_runs"`
	Servers  []string    `json:"servers"`
}

func (s *Service) policyView(tx *catalog.Txn, pol catalog.Policy, n int) PolicyView {
	v := PolicyView{Policy: pol, NextRuns: []time.Time{}, Servers: []string{}}
	if pol.Enabled {
		if runs, err := scheduler.NextRuns(pol, s.Clock.Now(), n); err == nil {
			v.NextRuns = runs
		}
	}
	if ss, err := tx.BoundServers(pol); err == nil {
		for _, sv := range ss {
			v.Servers = append(v.Servers, sv.Name)
		}
	}
	return v
}

func (s *Service) createPolicy(_ context.Context, p principal, r *http.Request) (any, error) {
	var req PolicyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	pol := catalog.Policy{Project: p.project.ID, Enabled: true, Created: s.now(), MaxBackups: -1, RetentionDays: -1}
	req.apply(&pol)
	var out PolicyView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		created, err := tx.CreatePolicy(pol)
		out = s.policyView(tx, created, DefaultNextRuns)
		return err
	})
	if err == nil {
		s.Scheduler.Poke()
	}
	return out, err
}

func (s *Service) listPolicies(_ context.Context, p principal, r *http.Request) (any, error) {
	pg, err := pageOf(r)
	if err != nil {
		return nil, err
	}
	var out []PolicyView
	var next string
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		ps, n, err := tx.PolicyPage(p.project.ID, pg)
		for _, pol := range ps {
			out = append(out, s.policyView(tx, pol, 1))
		}
		next = n
		return err
	})
	return paged{nonNil(out), next}, err
}

func (s *Service) showPolicy(_ context.Context, p principal, r *http.Request) (any, error) {
	n := DefaultNextRuns
	if v := r.URL.Query().Get("next"); v != "" {
		if _, err := fmt.Sscanf(v, "%d", &n); err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("%w: next=%q: want 0..100", catalog.ErrInvalid, v)
		}
	}
	var out PolicyView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		pol, err := tx.Policy(p.project.ID, r.PathValue("ref"))
		out = s.policyView(tx, pol, n)
		return err
	})
	return out, err
}

func (s *Service) updatePolicy(_ context.Context, p principal, r *http.Request) (any, error) {
	var req PolicyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	var out PolicyView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		pol, err := tx.Policy(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		req.apply(&pol)
		updated, err := tx.UpdatePolicy(pol)
		out = s.policyView(tx, updated, DefaultNextRuns)
		return err
	})
	if err == nil {
		s.Scheduler.Poke()
	}
	return out, err
}

func (s *Service) deletePolicy(_ context.Context, p principal, r *http.Request) (any, error) {
	err := s.Catalog.Release(func(tx *catalog.Txn) error {
		pol, err := tx.Policy(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		return tx.DeletePolicy(pol)
	})
	if err == nil {
		s.Scheduler.Poke()
	}
	return nil, err
}

// BindRequest is the body of POST /v1/policies/{ref}/bind.
type BindRequest struct {
	Server string `json:"server"`
}

func (s *Service) bindPolicy(_ context.Context, p principal, r *http.Request) (any, error) {
	var req BindRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	var out ServerView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		pol, err := tx.Policy(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		sv, err := tx.Server(p.project.ID, req.Server)
		if err != nil {
			return err
		}
		if sv.PolicyID == pol.ID {
			return fmt.Errorf("%w: server %s is already bound to policy %s", catalog.ErrConflict, sv.Name, pol.Name)
		}
		if sv.PolicyID != "" {
			other, _ := tx.Policy(p.project.ID, sv.PolicyID)
			return fmt.Errorf("%w: server %s is bound to policy %s; a server is in at most one policy (csbs policy unbind %s first)", catalog.ErrConflict, sv.Name, other.Name, sv.Name)
		}
		sv.PolicyID = pol.ID
		out = ServerView{Server: sv, Region: s.Region, PolicyName: pol.Name}
		return tx.PutServer(sv)
	})
	return out, err
}

func (s *Service) runPolicyNow(_ context.Context, p principal, r *http.Request) (any, error) {
	var pol catalog.Policy
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		pol, err = tx.Policy(p.project.ID, r.PathValue("ref"))
		return err
	})
	if err != nil {
		return nil, err
	}
	jobs, err := s.Scheduler.RunPolicy(pol, "run-now")
	return nonNil(jobs), err
}

func (s *Service) retentionPreview(_ context.Context, p principal, r *http.Request) (any, error) {
	var pol catalog.Policy
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		pol, err = tx.Policy(p.project.ID, r.PathValue("ref"))
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.Scheduler.RetentionPlan(pol)
}
