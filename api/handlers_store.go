package api

import (
	"context"
	"net/http"

	"csbs/blockstore"
	"csbs/catalog"
)

// ProjectStats are one project's figures in csbs store stats.
type ProjectStats struct {
	Project      string `json:"project"`
	Backups      int    `json:"backups"`
	LogicalBytes int64  `json:"logical_bytes"` // sum of disk sizes of its backups
	DataBytes    int64  `json:"data_bytes"`    // their non-zero blocks
	AddedBytes   int64  `json:"added_bytes"`   // stored bytes its backups added
}

// StoreStats is the answer of GET /v1/store/stats.
type StoreStats struct {
	blockstore.Stats
	DedupeRatio      float64        `json:"dedupe_ratio,omitempty"`
	CompressionRatio float64        `json:"compression_ratio,omitempty"`
	Projects         []ProjectStats `json:"projects"`
}

// maintenance starts a store-wide gc or scrub job (admin only).
func (s *Service) maintenance(kind string) handlerFunc {
	return func(_ context.Context, p principal, _ *http.Request) (any, error) {
		if !p.admin {
			return nil, errAdminOnly
		}
		return s.Runner.Submit(catalog.Job{Project: p.project.ID, Kind: kind, Note: "by hand"})
	}
}

func (s *Service) storeStats(ctx context.Context, p principal, _ *http.Request) (any, error) {
	return s.StoreStats(ctx, p.project.ID, p.admin)
}
