package api

import (
	"context"
	"fmt"
	"net/http"

	"csbs/catalog"
)

// MountRequest is the body of POST /v1/mounts, /v1/mounts/unmount,
// /v1/backups/{ref}/browse and /v1/browse/unmount.
type MountRequest struct {
	Path   string `json:"path"`
	Server string `json:"server,omitempty"`
	Backup string `json:"backup,omitempty"`
	Disk   string `json:"disk,omitempty"`
}

func (s *Service) listMounts(_ context.Context, p principal, _ *http.Request) (any, error) {
	return s.Mounts.List(p.project.ID), nil
}

func (s *Service) mount(_ context.Context, p principal, r *http.Request) (any, error) {
	var req MountRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	rec := catalog.MountRecord{Path: req.Path, Project: p.project.ID, ByAdmin: p.admin}
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		if req.Server != "" {
			sv, err := tx.Server(p.project.ID, req.Server)
			if err != nil {
				return err
			}
			rec.Server = sv.ID
		}
		if req.Backup != "" {
			b, err := tx.Backup(p.project.ID, req.Backup)
			if err != nil {
				return err
			}
			if b.Type != catalog.TypeEnhanced {
				return fmt.Errorf("%w: backup %s is Common; only Enhanced backups can be mounted (%s)", catalog.ErrInvalid, b.Name, b.TypeReason)
			}
			rec.Backup = b.ID
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.Mounts.Mount(rec)
}

func (s *Service) unmount(_ context.Context, p principal, r *http.Request) (any, error) {
	var req MountRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, s.Mounts.Unmount(p.project.ID, req.Path)
}

func (s *Service) browse(_ context.Context, p principal, r *http.Request) (any, error) {
	var req MountRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	b, err := s.findBackup(p, r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	if req.Disk == "" && len(b.Disks) > 0 {
		req.Disk = b.Disks[0].Name
	}
	return s.Mounts.Browse(b, req.Disk, req.Path, p.admin)
}

func (s *Service) unbrowse(_ context.Context, p principal, r *http.Request) (any, error) {
	var req MountRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, s.Mounts.Unbrowse(p.project.ID, req.Path)
}
