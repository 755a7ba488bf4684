package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/remote"
	"csbs/scheduler"
)

// ErrRemote marks a failure of (or a refusal by) the remote appliance:
// unreachable, a certificate that is not the pinned one, a refused
// token, a store that cannot share blocks with this one. The API answers
// it with 502. Such errors are *RemoteError.
var ErrRemote = errors.New("remote failed")

// RemoteError is a failure of, or a refusal by, a remote.
type RemoteError struct {
	Remote string
	Err    error
}

func (e *RemoteError) Error() string { return "remote " + e.Remote + ": " + e.Err.Error() }

// Unwrap returns the cause, so that its kind (transient or not) shows.
func (e *RemoteError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRemote) true.
func (e *RemoteError) Is(target error) bool { return target == ErrRemote }

// Service replicates backups from remotes into this appliance's store.
type Service struct {
	store  *blockstore.Store
	cat    *catalog.Catalog
	runner *scheduler.Runner
	clock  scheduler.Clock
	log    *slog.Logger
	dir    string
	region string

	// Tuning; tests and benchmarks may change them before the first run.
	Inflight  int           // batch requests in flight per transfer
	Batch     int           // blocks per request (at most remote.MaxBatch)
	Retries   int           // tries of a request that failed transiently
	Backoff   time.Duration // first wait between tries, doubling
	ProbeWait time.Duration // bound of a remote's identity check

	// DeleteBackup deletes a replica that a replication policy's Keep no
	// longer keeps, as a user's delete would (refusing a protected one
	// or one in use); nil: replicas are never deleted.
	DeleteBackup func(ctx context.Context, b catalog.Backup) error

	mu     sync.Mutex
	active map[string]string // replica state id → job replicating it
	runs   map[string]string // replication policy id → job running it
	open   map[blockstore.MapID]*blockstore.Import
	poke   chan struct{}
}

// New returns a service keeping its files (remote tokens, transfer
// scratch) under dir.
func New(store *blockstore.Store, cat *catalog.Catalog, runner *scheduler.Runner, clock scheduler.Clock, log *slog.Logger, dir, region string) *Service {
	return &Service{
		store: store, cat: cat, runner: runner, clock: clock, log: log, dir: dir, region: region,
		Inflight: 4, Batch: 64, Retries: 5, Backoff: 500 * time.Millisecond, ProbeWait: 15 * time.Second,
		active: map[string]string{}, runs: map[string]string{}, open: map[blockstore.MapID]*blockstore.Import{},
		poke: make(chan struct{}, 1),
	}
}

func (s *Service) tokenPath(remoteID string) string {
	return filepath.Join(s.dir, "remotes", remoteID+".token")
}

func (s *Service) scratchDir(stateID string) string {
	return filepath.Join(s.dir, "transfers", stateID)
}

// Recover marks replications left running by a previous daemon as
// failed; what they stored is kept, and the next run goes on from there.
// Call it once before jobs run.
func (s *Service) Recover() error {
	if err := os.MkdirAll(filepath.Join(s.dir, "remotes"), 0o700); err != nil {
		return fmt.Errorf("replication dir: %w", err)
	}
	return s.cat.Update(func(tx *catalog.Txn) error {
		sts, err := tx.ReplicaStates("")
		if err != nil {
			return err
		}
		for _, st := range sts {
			if st.State != catalog.ReplicaRunning {
				continue
			}
			st.State = catalog.ReplicaFailed
			st.Error = "interrupted: the daemon stopped during the replication; run it again to go on (blocks that arrived are kept)"
			st.Ended = s.clock.Now().UTC()
			if err := tx.PutReplicaState(st); err != nil {
				return err
			}
		}
		return nil
	})
}

// AddRemoteRequest is what `csbs remote add` sends.
type AddRemoteRequest struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Fingerprint string `json:"fingerprint"`
	Token       string `json:"token"`
}

// AddRemote checks a remote (reachable, the pinned certificate, a
// replication token it accepts, a store that can share blocks with this
// one), stores its token under the data dir (0600) and records it.
func (s *Service) AddRemote(ctx context.Context, project string, req AddRemoteRequest) (catalog.Remote, error) {
	if err := catalog.ValidateName("remote", req.Name); err != nil {
		return catalog.Remote{}, err
	}
	u, err := catalog.NormalizeRemoteURL(req.URL)
	if err != nil {
		return catalog.Remote{}, err
	}
	fp, err := remote.ParseFingerprint(req.Fingerprint)
	if err != nil {
		return catalog.Remote{}, fmt.Errorf("%w: remote %s: %v", catalog.ErrInvalid, req.Name, err)
	}
	token := strings.TrimSpace(req.Token)
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return catalog.Remote{}, fmt.Errorf("%w: remote %s: the token file holds no token (want the secret of csbs token create --project P --replication on the remote)", catalog.ErrInvalid, req.Name)
	}
	if err := s.cat.View(func(tx *catalog.Txn) error {
		if _, err := tx.Remote(project, req.Name); err == nil {
			return fmt.Errorf("%w: remote %q exists", catalog.ErrConflict, req.Name)
		}
		return nil
	}); err != nil {
		return catalog.Remote{}, err
	}
	c := remote.New(u, fp, token, remote.Options{Conns: 1})
	defer c.Close()
	id, err := s.identity(ctx, req.Name, c)
	if err != nil {
		return catalog.Remote{}, err
	}
	r := catalog.Remote{
		ID: catalog.NewID(catalog.KindRemote), Project: project, Name: req.Name, URL: u, Fingerprint: fp.String(),
		Created: s.clock.Now().UTC(), RemoteRegion: id.Region, RemoteProject: id.Project, BlockSize: id.BlockSize, Hash: id.Hash,
	}
	path := s.tokenPath(r.ID)
	if err := writeSecret(path, token); err != nil {
		return catalog.Remote{}, fmt.Errorf("remote %s: store its token: %w", req.Name, err)
	}
	err = s.cat.Update(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.CreateRemote(r)
		return err
	})
	if err != nil {
		os.Remove(path)
		return catalog.Remote{}, err
	}
	s.log.Info("remote added", "remote", r.Name, "url", r.URL, "region", r.RemoteRegion, "remote_project", r.RemoteProject)
	return r, nil
}

// identity asks a remote what it is and checks that its store can share
// blocks with this one.
func (s *Service) identity(ctx context.Context, name string, c *remote.Client) (remote.Identity, error) {
	pctx, cancel := context.WithTimeout(ctx, s.ProbeWait)
	defer cancel()
	id, err := c.Identity(pctx)
	if err != nil {
		return id, remoteErr(name, err)
	}
	if id.Hash != remote.HashAlgorithm {
		return id, &RemoteError{name, fmt.Errorf("hashes blocks with %q, this appliance with %q: their stores cannot share blocks", id.Hash, remote.HashAlgorithm)}
	}
	if bs := s.store.BlockSize(); id.BlockSize != bs {
		return id, &RemoteError{name, fmt.Errorf("stores %d-byte blocks, this appliance %d-byte blocks: replication needs the same store.block_size on both (it is fixed when a store is created)", id.BlockSize, bs)}
	}
	return id, nil
}

// remoteErr words a failure of a remote for the user.
func remoteErr(name string, err error) error {
	var ae *remote.APIError
	if errors.As(err, &ae) && ae.NotFound() {
		return fmt.Errorf("remote %s: %s %w", name, ae.Message, catalog.ErrNotFound)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &RemoteError{name, fmt.Errorf("did not answer in time: %w", err)}
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return err
	}
	return &RemoteError{name, err}
}

func writeSecret(path, secret string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(secret + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// client opens a client for a recorded remote.
// connect opens a client to r limited to rate, makes it the one tr
// counts, and checks that r answers as it did when it was added; the
// caller closes the client.
func (s *Service) connect(ctx context.Context, tr *tracker, r catalog.Remote, rate int64) (*remote.Client, error) {
	c, err := s.client(r, rate)
	if err != nil {
		return nil, err
	}
	tr.setClient(c)
	if _, err := s.identity(ctx, r.Name, c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (s *Service) client(r catalog.Remote, rate int64) (*remote.Client, error) {
	b, err := os.ReadFile(s.tokenPath(r.ID))
	if err != nil {
		return nil, fmt.Errorf("remote %s: read its token: %w (add the remote again)", r.Name, err)
	}
	fp, err := remote.ParseFingerprint(r.Fingerprint)
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", r.Name, err)
	}
	return remote.New(r.URL, fp, strings.TrimSpace(string(b)), remote.Options{Rate: rate, Conns: s.Inflight}), nil
}

func (s *Service) findRemote(project, ref string) (catalog.Remote, error) {
	var r catalog.Remote
	err := s.cat.View(func(tx *catalog.Txn) error {
		var err error
		r, err = tx.Remote(project, ref)
		return err
	})
	return r, err
}

// RemoteStatus is a live check of a remote.
type RemoteStatus struct {
	OK       bool             `json:"ok"`
	Error    string           `json:"error,omitempty"`
	Identity *remote.Identity `json:"identity,omitempty"`
}

// Check asks a remote whether it answers as it did when it was added.
func (s *Service) Check(ctx context.Context, r catalog.Remote) RemoteStatus {
	c, err := s.client(r, 0)
	if err != nil {
		return RemoteStatus{Error: err.Error()}
	}
	defer c.Close()
	id, err := s.identity(ctx, r.Name, c)
	if err != nil {
		return RemoteStatus{Error: err.Error()}
	}
	return RemoteStatus{OK: true, Identity: &id}
}

// RemoveRemote forgets a remote: its token file, its unfinished
// transfers (their blocks become garbage for GC) and the replication
// states; replicas stay. A remote a replication policy uses, or one a
// job is replicating from, is refused.
func (s *Service) RemoveRemote(ctx context.Context, project, ref string) error {
	r, err := s.findRemote(project, ref)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, job := range s.active {
		if strings.HasPrefix(id, r.ID+".") {
			return fmt.Errorf("%w: remote %s: job %s is replicating from it; cancel it first (csbs job cancel %s)", catalog.ErrConflict, r.Name, job, job)
		}
	}
	var states []catalog.ReplicaState
	err = s.cat.Update(func(tx *catalog.Txn) error {
		if err := tx.DeleteRemote(r); err != nil {
			return err
		}
		var err error
		if states, err = tx.ReplicaStates(r.ID); err != nil {
			return err
		}
		for _, st := range states {
			if err := tx.DeleteReplicaState(st); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, st := range states {
		s.dropImports(ctx, st)
	}
	os.Remove(s.tokenPath(r.ID))
	s.log.Info("remote removed", "remote", r.Name)
	return nil
}

// dropImports aborts the staged maps of a replication that will not go
// on, and removes its scratch files.
func (s *Service) dropImports(ctx context.Context, st catalog.ReplicaState) {
	for _, im := range st.Imports {
		id, err := blockstore.ParseMapID(im.MapID)
		if err == nil {
			s.forgetImport(id)
			err = s.store.AbortImport(context.WithoutCancel(ctx), id)
		}
		if err != nil {
			s.log.Warn("drop the staged map of a replication", "map", im.MapID, "err", err)
		}
	}
	os.RemoveAll(s.scratchDir(st.ID))
}

// Poke makes the replication scheduler read its policies again.
func (s *Service) Poke() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}
