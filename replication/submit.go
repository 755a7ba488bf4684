package replication

import (
	"context"
	"fmt"

	"csbs/catalog"
	"csbs/remote"
)

// RemoteBackup is a remote's backup with this appliance's replication
// state of it.
type RemoteBackup struct {
	remote.BackupInfo
	Size        int64            `json:"size"`
	Replication ReplicationState `json:"replication"`
}

// ReplicationState is the state of one remote backup's replication here.
type ReplicationState struct {
	State         string `json:"state"` // none | running | ok | failed
	Error         string `json:"error,omitempty"`
	JobID         string `json:"job_id,omitempty"`
	ReplicaID     string `json:"replica_id,omitempty"`   // the replica here, once ok
	ReplicaName   string `json:"replica_name,omitempty"` // "" when it was deleted here since
	BlocksFetched int64  `json:"blocks_fetched"`
	BlocksSkipped int64  `json:"blocks_skipped"`
	WireBytes     int64  `json:"wire_bytes"`
	// Qualifies is false (and Why says why) for a backup that cannot be
	// replicated: not available, damaged, or a replica itself.
	Qualifies bool   `json:"qualifies"`
	Why       string `json:"why,omitempty"`
}

func (s *Service) stateView(tx *catalog.Txn, r catalog.Remote, b remote.BackupInfo) (ReplicationState, error) {
	st, err := tx.ReplicaState(r.Project, r.ID, b.ID)
	if err != nil {
		return ReplicationState{}, err
	}
	v := ReplicationState{State: st.State, Error: st.Error, JobID: st.JobID, ReplicaID: st.BackupID,
		BlocksFetched: st.BlocksFetched, BlocksSkipped: st.BlocksSkipped, WireBytes: st.WireBytes, Qualifies: true}
	if st.BackupID != "" {
		if rb, err := tx.Backup(r.Project, st.BackupID); err == nil {
			v.ReplicaName = rb.Name
		}
	}
	if err := b.Qualifies(); err != nil {
		v.Qualifies, v.Why = false, err.Error()
	}
	return v, nil
}

// RemoteBackups lists a remote's backups (of one server, or all) with
// their replication state here.
func (s *Service) RemoteBackups(ctx context.Context, project, remoteRef, server string) ([]RemoteBackup, error) {
	r, err := s.findRemote(project, remoteRef)
	if err != nil {
		return nil, err
	}
	c, err := s.client(r, 0)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	bs, err := c.Backups(ctx, server)
	if err != nil {
		return nil, remoteErr(r.Name, err)
	}
	out := []RemoteBackup{}
	err = s.cat.View(func(tx *catalog.Txn) error {
		for _, b := range bs {
			v, err := s.stateView(tx, r, b)
			if err != nil {
				return err
			}
			out = append(out, RemoteBackup{BackupInfo: b, Size: b.Size(), Replication: v})
		}
		return nil
	})
	return out, err
}

// RemoteBackup shows one backup of a remote with its replication state.
func (s *Service) RemoteBackup(ctx context.Context, project, remoteRef, backupRef string) (RemoteBackup, error) {
	r, err := s.findRemote(project, remoteRef)
	if err != nil {
		return RemoteBackup{}, err
	}
	c, err := s.client(r, 0)
	if err != nil {
		return RemoteBackup{}, err
	}
	defer c.Close()
	b, err := c.Backup(ctx, backupRef)
	if err != nil {
		return RemoteBackup{}, remoteErr(r.Name, err)
	}
	var out RemoteBackup
	err = s.cat.View(func(tx *catalog.Txn) error {
		v, err := s.stateView(tx, r, b)
		out = RemoteBackup{BackupInfo: b, Size: b.Size(), Replication: v}
		return err
	})
	return out, err
}

// Replicate queues the replication of one remote backup (by id or name
// on the remote); rate limits it in bytes per second (0 = unlimited).
func (s *Service) Replicate(ctx context.Context, project, remoteRef, backupRef string, rate int64) (catalog.Job, error) {
	if rate < 0 {
		return catalog.Job{}, fmt.Errorf("%w: rate %d: want bytes per second, 0 for unlimited", catalog.ErrInvalid, rate)
	}
	r, err := s.findRemote(project, remoteRef)
	if err != nil {
		return catalog.Job{}, err
	}
	c, err := s.client(r, 0)
	if err != nil {
		return catalog.Job{}, err
	}
	defer c.Close()
	if _, err := s.identity(ctx, r.Name, c); err != nil {
		return catalog.Job{}, err
	}
	b, err := c.Backup(ctx, backupRef)
	if err != nil {
		return catalog.Job{}, remoteErr(r.Name, err)
	}
	if err := b.Qualifies(); err != nil {
		return catalog.Job{}, fmt.Errorf("%w: remote %s: %v", catalog.ErrConflict, r.Name, err)
	}
	var st catalog.ReplicaState
	replicaExists := false
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		if st, err = tx.ReplicaState(project, r.ID, b.ID); err != nil {
			return err
		}
		if st.State == catalog.ReplicaOK {
			_, err := tx.Backup(project, st.BackupID)
			replicaExists = err == nil
		}
		return nil
	}); err != nil {
		return catalog.Job{}, err
	}
	if replicaExists {
		return catalog.Job{}, fmt.Errorf("%w: backup %s of remote %s is replicated here already (backup %s)", catalog.ErrConflict, b.Name, r.Name, st.BackupID)
	}
	j := catalog.Job{
		ID: catalog.NewID(catalog.KindJob), Project: project, Kind: catalog.JobReplicate,
		Replicate: &catalog.ReplicateJob{RemoteID: r.ID, RemoteName: r.Name, SourceBackupID: b.ID, SourceBackupName: b.Name, Rate: rate},
	}
	if err := s.claim(st.ID, j.ID); err != nil {
		return catalog.Job{}, fmt.Errorf("backup %s of remote %s: %w", b.Name, r.Name, err)
	}
	out, err := s.runner.Submit(j)
	if err != nil {
		s.release(st.ID)
	}
	return out, err
}

// claim marks a remote backup as being replicated by job; a second job
// for the same backup is refused.
func (s *Service) claim(stateID, job string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.active[stateID]; ok && other != job {
		return fmt.Errorf("%w: job %s is replicating it (csbs job wait %s)", catalog.ErrConflict, other, other)
	}
	s.active[stateID] = job
	return nil
}

func (s *Service) release(stateID string) {
	s.mu.Lock()
	delete(s.active, stateID)
	s.mu.Unlock()
}

// RunPolicy queues a run of a replication policy now (run-now, or its
// schedule).
func (s *Service) RunPolicy(rep catalog.Replication, note string) (catalog.Job, error) {
	var r catalog.Remote
	if err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Remote(rep.Project, rep.RemoteID)
		return err
	}); err != nil {
		return catalog.Job{}, fmt.Errorf("replication %s: %w", rep.Name, err)
	}
	j := catalog.Job{
		ID: catalog.NewID(catalog.KindJob), Project: rep.Project, Kind: catalog.JobReplicate, Note: note,
		Replicate: &catalog.ReplicateJob{RemoteID: r.ID, RemoteName: r.Name, ReplicationID: rep.ID, Rate: rep.Rate},
	}
	s.mu.Lock()
	if other, ok := s.runs[rep.ID]; ok {
		s.mu.Unlock()
		return catalog.Job{}, fmt.Errorf("%w: replication %s is running as job %s", catalog.ErrConflict, rep.Name, other)
	}
	s.runs[rep.ID] = j.ID
	s.mu.Unlock()
	out, err := s.runner.Submit(j)
	if err != nil {
		s.mu.Lock()
		delete(s.runs, rep.ID)
		s.mu.Unlock()
	}
	return out, err
}
