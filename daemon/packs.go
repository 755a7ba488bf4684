package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"csbs/api"
	"csbs/blockstore"
	"csbs/blockstore/s3packs"
	"csbs/config"
	"csbs/internal/durable"
)

// backendFile records, in the store directory, where the store's packs
// live: a store created on one backend cannot be opened on another (its
// index would point at packs that are not there).
const backendFile = "backend"

// openPacks returns the pack store the config selects: nil for the local
// default, or the bucket (also returned as *S3Packs for status and
// metrics).
func openPacks(ctx context.Context, cfg config.Config, log *slog.Logger) (blockstore.PackStore, *s3packs.S3Packs, error) {
	if err := checkBackend(cfg.StoreDir(), backendName(cfg)); err != nil {
		return nil, nil, err
	}
	if cfg.Store.Backend != config.BackendS3 {
		return nil, nil, nil
	}
	c := cfg.Store.S3
	creds, err := s3packs.LoadCredentials(c.CredentialsFile, os.Getenv)
	if err != nil {
		return nil, nil, err
	}
	p, err := s3packs.Open(ctx, s3packs.Config{
		Endpoint: c.Endpoint, Bucket: c.Bucket, Region: c.Region, PathStyle: c.PathStyle, Prefix: c.Prefix,
		Credentials: creds, NoCreateOnly: !c.CreateOnly,
		CacheDir: cfg.S3CacheDir(), CacheBytes: int64(c.CacheSize),
		Logger: log.With("component", "s3"),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("store backend s3: %w", err)
	}
	log.Info("block data in an object store", "endpoint", c.Endpoint, "bucket", c.Bucket, "prefix", c.Prefix, "credentials", creds)
	return p, p, nil
}

// checkBackend compares the store's recorded backend with want. A store
// from before backends were recorded is local. Nothing is written here:
// the directory must not appear before blockstore.Open has finished an
// interrupted upgrade (see blockstore's migrate.go); recordBackend runs
// after it.
func checkBackend(storeDir, want string) error {
	b, err := os.ReadFile(filepath.Join(storeDir, backendFile))
	switch {
	case err == nil:
		have := strings.TrimSpace(string(b))
		if have != want {
			return fmt.Errorf("store %s keeps its packs in %q, but the config says %q (store.backend, store.s3.bucket, store.s3.prefix): a store cannot move between backends; set them back, or use a new data_dir", storeDir, have, want)
		}
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("store %s: %w", storeDir, err)
	}
	if want == config.BackendLocal {
		return nil
	}
	for _, p := range []string{filepath.Join(storeDir, "MANIFEST"), storeDir + ".upgrade"} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("store %s was created with local packs, but the config says %q (store.backend): a store cannot move between backends; use a new data_dir for the s3 backend", storeDir, want)
		}
	}
	return nil
}

// recordBackend writes the backend of an open store, once.
func recordBackend(storeDir, want string) error {
	path := filepath.Join(storeDir, backendFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := durable.WriteFile(path, []byte(want+"\n"), 0o600); err != nil {
		return fmt.Errorf("store %s: record the backend: %w", storeDir, err)
	}
	return nil
}

// backendName is what the store directory records for cfg.
func backendName(cfg config.Config) string {
	if cfg.Store.Backend == config.BackendS3 {
		return fmt.Sprintf("s3 bucket=%s prefix=%s", cfg.Store.S3.Bucket, cfg.Store.S3.Prefix)
	}
	return config.BackendLocal
}

// objectStoreStatus is the s3 backend's part of csbs status.
func objectStoreStatus(p *s3packs.S3Packs) *api.ObjectStoreStatus {
	st := p.Stats()
	out := &api.ObjectStoreStatus{
		Location: p.Describe(), Requests: st.Requests, Failures: st.Failures, Retries: st.Retries,
		BytesUp: st.BytesUp, BytesDown: st.BytesDown, CacheBytes: st.Cache.Bytes, CacheLimit: st.Cache.Limit,
		CachePacksHeld: st.Cache.Packs,
	}
	if n := st.Cache.Hits + st.Cache.Misses; n > 0 {
		out.CacheHitRatio = float64(st.Cache.Hits) / float64(n)
	}
	return out
}
