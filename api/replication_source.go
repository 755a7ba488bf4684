package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"csbs/blockstore"
	"csbs/catalog"
	"csbs/remote"
)

// The source side of replication: what another appliance holding a
// replication token of a project may read (and nothing else may read
// here). Everything is read-only; bulk answers are binary streams (see
// package remote).

var (
	errReplicationTokenOnly  = &Error{Status: http.StatusForbidden, Code: "forbidden", Message: "a replication token may only pull backups for replication (GET /v1/replication/...); use a project or admin token for anything else"}
	errNeedsReplicationToken = &Error{Status: http.StatusForbidden, Code: "forbidden", Message: "replication endpoints need a replication token (csbs token create --project P --replication); admin and project tokens cannot pull backups"}
)

type rawHandlerFunc func(ctx context.Context, p principal, w http.ResponseWriter, r *http.Request) error

// replicationRoutes registers the source side's endpoints; they take
// replication tokens only.
func (s *Service) replicationRoutes(mux *http.ServeMux) {
	json := func(pattern string, h handlerFunc) {
		mux.Handle(pattern, s.wrapAs(true, h))
	}
	raw := func(pattern string, h rawHandlerFunc) {
		mux.Handle(pattern, s.wrapRaw(h))
	}
	json("GET /v1/replication/identity", s.replicationIdentity)
	json("GET /v1/replication/backups", s.replicationBackups)
	json("GET /v1/replication/backups/{ref}", s.replicationBackup)
	raw("GET /v1/replication/backups/{ref}/disks/{disk}/map", s.replicationMap)
	raw("POST /v1/replication/backups/{ref}/blocks", s.replicationBlocks)
}

// wrapRaw authenticates a replication token and lets h write its own
// answer; an error before h wrote anything is answered as JSON.
func (s *Service) wrapRaw(h rawHandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		p, err := s.authenticate(r)
		if err == nil && !p.token.Replication {
			err = errNeedsReplicationToken
		}
		if err != nil {
			writeError(w, errorStatus(err))
			return
		}
		tw := &trackingWriter{ResponseWriter: w}
		if err := h(r.Context(), p, tw, r); err != nil {
			if tw.wrote {
				// The stream is cut short; its missing end tells the
				// receiver.
				s.Log.Warn("replication stream ended early", "path", r.URL.Path, "err", err)
				return
			}
			e := errorStatus(err)
			if e.Status >= 500 {
				s.Log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, e)
		}
	})
}

type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(p)
}

func (s *Service) replicationIdentity(_ context.Context, p principal, _ *http.Request) (any, error) {
	return remote.Identity{
		Region: s.Region, Project: p.project.Name, BlockSize: s.Engine.Store.BlockSize(),
		Hash: remote.HashAlgorithm, Version: s.Version, MaxBatch: remote.MaxBatch,
	}, nil
}

func (s *Service) backupInfo(b catalog.Backup) remote.BackupInfo {
	out := remote.BackupInfo{
		ID: b.ID, Name: b.Name, ServerID: b.ServerID, ServerName: b.ServerName, Type: b.Type, Trigger: b.Trigger,
		Full: b.Full, Created: b.Created, Region: s.Region, Status: b.Status, Damaged: b.Damaged,
		Replica: b.Replica != nil, TypeReason: b.TypeReason, Disks: []remote.DiskInfo{},
	}
	if b.Replica != nil {
		out.Region = b.Replica.SourceRegion
	}
	for _, d := range b.Disks {
		out.Disks = append(out.Disks, remote.DiskInfo{Name: d.Name, Size: d.Size, Blocks: d.Blocks})
	}
	return out
}

func (s *Service) replicationBackups(_ context.Context, p principal, r *http.Request) (any, error) {
	server := r.URL.Query().Get("server")
	out := []remote.BackupInfo{}
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		bs, err := tx.Backups(p.project.ID, catalog.BackupFilter{})
		for _, b := range bs {
			// By id or name; the server itself may be gone.
			if server == "" || b.ServerID == server || b.ServerName == server {
				out = append(out, s.backupInfo(b))
			}
		}
		return err
	})
	return out, err
}

func (s *Service) replicationBackup(_ context.Context, p principal, r *http.Request) (any, error) {
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	return s.backupInfo(b), nil
}

// replicable finds a backup the token may replicate now.
func (s *Service) replicable(p principal, ref string) (catalog.Backup, error) {
	b, err := s.findBackup(p, ref)
	if err != nil {
		return b, err
	}
	if err := s.backupInfo(b).Qualifies(); err != nil {
		return b, fmt.Errorf("%w: %v", catalog.ErrConflict, err)
	}
	return b, nil
}

func backupDisk(b catalog.Backup, name string) (catalog.BackupDisk, blockstore.MapID, error) {
	for _, d := range b.Disks {
		if d.Name == name {
			id, err := blockstore.ParseMapID(d.MapID)
			return d, id, err
		}
	}
	return catalog.BackupDisk{}, blockstore.MapID{}, fmt.Errorf("backup %s has no disk %q: %w", b.Name, name, catalog.ErrNotFound)
}

// replicationMap streams a disk's block map, as differences to the base
// backup's map when the receiver names one it holds.
func (s *Service) replicationMap(ctx context.Context, p principal, w http.ResponseWriter, r *http.Request) error {
	b, err := s.replicable(p, r.PathValue("ref"))
	if err != nil {
		return err
	}
	disk := r.PathValue("disk")
	_, id, err := backupDisk(b, disk)
	if err != nil {
		return err
	}
	store := s.Engine.Store
	info, err := store.MapInfo(id)
	if err != nil {
		return fmt.Errorf("backup %s disk %s: %w", b.Name, disk, err)
	}
	release := s.Engine.Acquire(b.ID)
	defer release()
	var base *blockstore.Volume
	if ref := r.URL.Query().Get("base"); ref != "" {
		// A base that is gone or does not fit is not an error: the map
		// is sent whole.
		if bb, err := s.replicable(p, ref); err == nil && bb.ID != b.ID {
			if _, bid, err := backupDisk(bb, disk); err == nil {
				if v, err := store.OpenVolume(bid); err == nil && v.BlockSize() == info.BlockSize {
					base = v
					defer v.Close()
					rb := s.Engine.Acquire(bb.ID)
					defer rb()
				}
			}
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	mw, err := remote.NewMapWriter(w, remote.MapHeader{Size: info.Size, BlockSize: info.BlockSize, Base: base != nil})
	if err != nil {
		return err
	}
	err = store.MapHashes(ctx, id, func(seg int64, hs []blockstore.Hash) error {
		var bh []blockstore.Hash
		if base != nil {
			bh = make([]blockstore.Hash, len(hs))
			first := seg * blockstore.SegmentEntries
			for i := range bh {
				if j := first + int64(i); j < base.Info().Blocks() {
					h, err := base.BlockHash(j)
					if err != nil {
						return fmt.Errorf("base backup map: %w", err)
					}
					bh[i] = h
				}
			}
		}
		return mw.Segment(seg, hs, bh)
	})
	if err != nil {
		return fmt.Errorf("backup %s disk %s map: %w", b.Name, disk, err)
	}
	return mw.End()
}

// replicationBlocks streams the stored values of a batch of blocks, each
// named by its place in the backup: a block is sent only if the backup
// really has it there, so a token reads no block of another project.
func (s *Service) replicationBlocks(ctx context.Context, p principal, w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: block request larger than %d bytes", errBadBody, MaxRequestBytes)
		}
		return err
	}
	refs, err := remote.DecodeBlockRequest(body)
	if err != nil {
		return fmt.Errorf("%w: %v", catalog.ErrInvalid, err)
	}
	b, err := s.replicable(p, r.PathValue("ref"))
	if err != nil {
		return err
	}
	store := s.Engine.Store
	vols := map[int]*blockstore.Volume{}
	defer func() {
		for _, v := range vols {
			v.Close()
		}
	}()
	for _, ref := range refs {
		v := vols[ref.Disk]
		if v == nil {
			if ref.Disk >= len(b.Disks) {
				return fmt.Errorf("%w: backup %s has no disk #%d", catalog.ErrInvalid, b.Name, ref.Disk)
			}
			_, id, err := backupDisk(b, b.Disks[ref.Disk].Name)
			if err != nil {
				return err
			}
			if v, err = store.OpenVolume(id); err != nil {
				return fmt.Errorf("backup %s disk %s: %w", b.Name, b.Disks[ref.Disk].Name, err)
			}
			vols[ref.Disk] = v
		}
		if ref.Index >= v.Info().Blocks() {
			return fmt.Errorf("%w: backup %s disk %s has %d blocks, not %d", catalog.ErrInvalid, b.Name, b.Disks[ref.Disk].Name, v.Info().Blocks(), ref.Index+1)
		}
		h, err := v.BlockHash(ref.Index)
		if err != nil {
			return fmt.Errorf("backup %s disk %s: %w", b.Name, b.Disks[ref.Disk].Name, err)
		}
		if h != ref.Hash || h.IsZero() {
			return fmt.Errorf("%w: block %d of backup %s disk %s is not %s", catalog.ErrInvalid, ref.Index, b.Name, b.Disks[ref.Disk].Name, ref.Hash)
		}
	}
	release := s.Engine.Acquire(b.ID)
	defer release()
	w.Header().Set("Content-Type", "application/octet-stream")
	bw := bufio.NewWriterSize(w, 256<<10)
	for _, ref := range refs {
		v, err := store.StoredValue(ctx, ref.Hash)
		if err != nil {
			status := byte(remote.BlockFailed)
			if blockstore.IsDataError(err) {
				status = remote.BlockDamaged
				s.Log.Error("replication: damaged block", "backup", b.Name, "disk", b.Disks[ref.Disk].Name, "block", ref.Index, "err", err)
			}
			if werr := remote.WriteBlock(bw, status, remote.BlockErrorMessage(err)); werr != nil {
				return werr
			}
			return bw.Flush()
		}
		if err := remote.WriteBlock(bw, remote.BlockOK, v); err != nil {
			return err
		}
	}
	return bw.Flush()
}
