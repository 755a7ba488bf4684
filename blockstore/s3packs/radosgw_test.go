package s3packs

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"csbs/blockstore"
	"csbs/blockstore/storetest"
	"csbs/internal/radosgw"
)

// The conformance suite and the error kinds against a real Ceph RADOS
// Gateway: its answers (range GETs, If-None-Match, error codes) are the
// ones the appliance meets in production, not a fake's.
func TestRadosGW(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: -short (starts a Ceph cluster)")
	}
	gw := radosgw.Start(t, 0)
	gw.CreateBucket(t, "csbs")
	base := func(loc string) Config {
		return Config{
			Endpoint: gw.Endpoint, Bucket: "csbs", PathStyle: true, Prefix: strings.Trim(loc, "/") + "/",
			Credentials: Credentials{AccessKeyID: gw.AccessKey, SecretAccessKey: gw.SecretKey, Source: "test"},
			CacheDir:    filepath.Join(loc, "cache"), CacheBytes: 8 << 20, ChunkSize: 256 << 10,
		}
	}
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, loc string) blockstore.PackStore { return open(t, base(loc)) })
	})
	t.Run("WrongSecret", func(t *testing.T) {
		cfg := base(t.TempDir())
		cfg.Credentials.SecretAccessKey = "wrong-" + gw.SecretKey
		_, err := Open(context.Background(), cfg)
		if !errors.Is(err, ErrAccessDenied) {
			t.Fatalf("open with a wrong secret: %v, want ErrAccessDenied", err)
		}
		if strings.Contains(err.Error(), gw.SecretKey) || strings.Contains(err.Error(), gw.AccessKey) {
			t.Errorf("error shows a credential: %v", err)
		}
	})
	t.Run("UnknownKey", func(t *testing.T) {
		cfg := base(t.TempDir())
		cfg.Credentials.AccessKeyID = "NOSUCHKEY0000"
		if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrAccessDenied) {
			t.Fatalf("open with an unknown key: %v, want ErrAccessDenied", err)
		}
	})
	t.Run("MissingBucket", func(t *testing.T) {
		cfg := base(t.TempDir())
		cfg.Bucket = "no-such-bucket"
		if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrNoSuchBucket) {
			t.Fatalf("open of a missing bucket: %v, want ErrNoSuchBucket", err)
		}
	})
	t.Run("CreateOnlyRefused", func(t *testing.T) {
		cfg := base(t.TempDir())
		cfg.CacheDir = ""
		s := open(t, cfg)
		ctx := context.Background()
		if err := s.Put(ctx, 1, stage(t, randBytes(1000)), 1000); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, 1, stage(t, randBytes(1000)), 1000); !errors.Is(err, ErrExists) {
			t.Fatalf("second PUT of a pack: %v, want ErrExists (If-None-Match: *)", err)
		}
	})
}
