package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"csbs/catalog"
	"csbs/replication"
)

// The destination side of replication: remotes, replication policies,
// and replicating a remote's backup. Adding and removing a remote takes
// an admin token (the daemon connects where the remote's URL says, with
// the token it holds); a project token uses its project's remotes.

func (s *Service) replicationDestRoutes(route func(string, handlerFunc)) {
	route("GET /v1/remotes", s.listRemotes)
	route("POST /v1/remotes", s.addRemote)
	route("GET /v1/remotes/{ref}", s.showRemote)
	route("DELETE /v1/remotes/{ref}", s.removeRemote)
	route("GET /v1/remotes/{ref}/backups", s.listRemoteBackups)
	route("GET /v1/remotes/{ref}/backups/{backup}", s.showRemoteBackup)
	route("POST /v1/remotes/{ref}/backups/{backup}/replicate", s.replicateBackup)
	route("GET /v1/replications", s.listReplications)
	route("POST /v1/replications", s.createReplication)
	route("GET /v1/replications/{ref}", s.showReplication)
	route("DELETE /v1/replications/{ref}", s.deleteReplication)
	route("POST /v1/replications/{ref}/run-now", s.runReplicationNow)
}

// RemoteView is a remote as the API shows it: never its token.
type RemoteView struct {
	catalog.Remote
	Replications []string `json:"replications"` // policies that use it
	// Status is a live check, in GET /v1/remotes/{ref} and the answer
	// to POST /v1/remotes.
	Status *replication.RemoteStatus `json:"status,omitempty"`
}

func (s *Service) remoteView(tx *catalog.Txn, r catalog.Remote) (RemoteView, error) {
	v := RemoteView{Remote: r, Replications: []string{}}
	reps, err := tx.Replications(r.Project)
	for _, rep := range reps {
		if rep.RemoteID == r.ID {
			v.Replications = append(v.Replications, rep.Name)
		}
	}
	return v, err
}

func (s *Service) listRemotes(_ context.Context, p principal, _ *http.Request) (any, error) {
	out := []RemoteView{}
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		rs, err := tx.Remotes(p.project.ID)
		if err != nil {
			return err
		}
		for _, r := range rs {
			v, err := s.remoteView(tx, r)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

func (s *Service) addRemote(ctx context.Context, p principal, r *http.Request) (any, error) {
	if !p.admin {
		return nil, &Error{http.StatusForbidden, "forbidden", "adding a remote needs an admin token: the appliance connects to the remote's address with the token it is given"}
	}
	var req replication.AddRemoteRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	rm, err := s.Replication.AddRemote(ctx, p.project.ID, req)
	if err != nil {
		return nil, err
	}
	var out RemoteView
	err = s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		out, err = s.remoteView(tx, rm)
		return err
	})
	out.Status = &replication.RemoteStatus{OK: true}
	return out, err
}

func (s *Service) showRemote(ctx context.Context, p principal, r *http.Request) (any, error) {
	var out RemoteView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		rm, err := tx.Remote(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		out, err = s.remoteView(tx, rm)
		return err
	})
	if err != nil {
		return nil, err
	}
	if r.URL.Query().Get("check") != "false" {
		st := s.Replication.Check(ctx, out.Remote)
		out.Status = &st
	}
	return out, nil
}

func (s *Service) removeRemote(ctx context.Context, p principal, r *http.Request) (any, error) {
	if !p.admin {
		return nil, &Error{http.StatusForbidden, "forbidden", "removing a remote needs an admin token"}
	}
	return nil, s.Replication.RemoveRemote(ctx, p.project.ID, r.PathValue("ref"))
}

func (s *Service) listRemoteBackups(ctx context.Context, p principal, r *http.Request) (any, error) {
	t := r.URL.Query().Get("type")
	if t != "" && t != catalog.TypeCommon && t != catalog.TypeEnhanced {
		return nil, fmt.Errorf("%w: type %q: want common or enhanced", catalog.ErrInvalid, t)
	}
	bs, err := s.Replication.RemoteBackups(ctx, p.project.ID, r.PathValue("ref"), r.URL.Query().Get("server"))
	if err != nil || t == "" {
		return bs, err
	}
	out := []replication.RemoteBackup{}
	for _, b := range bs {
		if b.Type == t {
			out = append(out, b)
		}
	}
	return out, nil
}

func (s *Service) showRemoteBackup(ctx context.Context, p principal, r *http.Request) (any, error) {
	return s.Replication.RemoteBackup(ctx, p.project.ID, r.PathValue("ref"), r.PathValue("backup"))
}

// ReplicateRequest is the body of POST /v1/remotes/{ref}/backups/{backup}/replicate.
type ReplicateRequest struct {
	Rate int64 `json:"rate,omitempty"` // bytes/s on the wire; 0 = unlimited
}

func (s *Service) replicateBackup(ctx context.Context, p principal, r *http.Request) (any, error) {
	var req ReplicateRequest
	if err := decodeOptional(r, &req); err != nil {
		return nil, err
	}
	return s.Replication.Replicate(ctx, p.project.ID, r.PathValue("ref"), r.PathValue("backup"), req.Rate)
}

// ReplicationRequest is the body of POST /v1/replications.
type ReplicationRequest struct {
	Name      string   `json:"name"`
	Remote    string   `json:"remote"`
	Server    string   `json:"server,omitempty"`
	Last      int      `json:"last,omitempty"`
	Keep      int      `json:"keep,omitempty"`
	Times     []string `json:"times"`
	EveryDays *int     `json:"every_days,omitempty"`
	Weekdays  []string `json:"weekdays,omitempty"`
	Timezone  string   `json:"timezone,omitempty"`
	Rate      int64    `json:"rate,omitempty"`
	Enabled   *bool    `json:"enabled,omitempty"`
}

// ReplicationView is a replication policy as the API shows it.
type ReplicationView struct {
	catalog.Replication
	RemoteName string       `json:"remote_name"`
	NextRuns   []time.Time  `json:"next_runs"`
	LastJob    *catalog.Job `json:"last_job,omitempty"`
}

func (s *Service) replicationView(tx *catalog.Txn, rep catalog.Replication, n int) (ReplicationView, error) {
	v := ReplicationView{Replication: rep, NextRuns: []time.Time{}}
	if rm, err := tx.Remote(rep.Project, rep.RemoteID); err == nil {
		v.RemoteName = rm.Name
	}
	if rep.Enabled {
		runs, err := replication.NextRuns(rep, s.now(), n)
		if err != nil {
			return v, err
		}
		v.NextRuns = append(v.NextRuns, runs...)
	}
	j, ok, err := tx.NewestJob(catalog.JobReplicate, func(j catalog.Job) bool {
		return j.Project == rep.Project && j.Replicate != nil && j.Replicate.ReplicationID == rep.ID
	})
	if ok {
		if live, err := s.Runner.Job(rep.Project, j.ID); err == nil {
			j = live
		}
		v.LastJob = &j
	}
	return v, err
}

func (s *Service) listReplications(_ context.Context, p principal, _ *http.Request) (any, error) {
	out := []ReplicationView{}
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		reps, err := tx.Replications(p.project.ID)
		if err != nil {
			return err
		}
		for _, rep := range reps {
			v, err := s.replicationView(tx, rep, 1)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

func (s *Service) createReplication(_ context.Context, p principal, r *http.Request) (any, error) {
	var req ReplicationRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	rep := catalog.Replication{
		Project: p.project.ID, Name: req.Name, Server: req.Server, Last: req.Last, Keep: req.Keep, Times: req.Times,
		Weekdays: req.Weekdays, Timezone: req.Timezone, Rate: req.Rate, Enabled: true, Created: s.now(),
	}
	if req.Enabled != nil {
		rep.Enabled = *req.Enabled
	}
	switch {
	case req.EveryDays != nil && len(req.Weekdays) > 0:
		return nil, fmt.Errorf("%w: replication %s: give --every-days or --weekdays, not both", catalog.ErrInvalid, req.Name)
	case req.EveryDays != nil:
		rep.Period, rep.EveryN = catalog.PeriodDays, *req.EveryDays
	case len(req.Weekdays) > 0:
		rep.Period = catalog.PeriodWeekdays
	}
	var out ReplicationView
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		rm, err := tx.Remote(p.project.ID, req.Remote)
		if err != nil {
			return err
		}
		rep.RemoteID = rm.ID
		if rep, err = tx.CreateReplication(rep); err != nil {
			return err
		}
		out, err = s.replicationView(tx, rep, 5)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.Replication.Poke()
	return out, nil
}

func (s *Service) showReplication(_ context.Context, p principal, r *http.Request) (any, error) {
	n := 5
	if v := r.URL.Query().Get("next"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("%w: next=%q: want 0..100", catalog.ErrInvalid, v)
		}
	}
	var out ReplicationView
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		rep, err := tx.Replication(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		out, err = s.replicationView(tx, rep, n)
		return err
	})
	return out, err
}

func (s *Service) deleteReplication(_ context.Context, p principal, r *http.Request) (any, error) {
	err := s.Catalog.Update(func(tx *catalog.Txn) error {
		rep, err := tx.Replication(p.project.ID, r.PathValue("ref"))
		if err != nil {
			return err
		}
		return tx.DeleteReplication(rep)
	})
	if err == nil {
		s.Replication.Poke()
	}
	return nil, err
}

func (s *Service) runReplicationNow(_ context.Context, p principal, r *http.Request) (any, error) {
	var rep catalog.Replication
	if err := s.Catalog.View(func(tx *catalog.Txn) error {
		var err error
		rep, err = tx.Replication(p.project.ID, r.PathValue("ref"))
		return err
	}); err != nil {
		return nil, err
	}
	return s.Replication.RunPolicy(rep, "run now (csbs replication run-now)")
}
