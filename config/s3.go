package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
)

// Store backends.
const (
	BackendLocal = "local"
	BackendS3    = "s3"
)

// S3 configures the object-store backend ([store.s3]), used when
// store.backend = "s3".
type S3 struct {
	Endpoint  string `toml:"endpoint"`   // http(s)://host[:port]
	Bucket    string `toml:"bucket"`     // must exist
	Region    string `toml:"region"`     // signing region
	PathStyle bool   `toml:"path_style"` // bucket in the path (self-hosted servers), not in the host name
	// CredentialsFile is a TOML file with access_key_id and
	// secret_access_key, mode 0600; empty: AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY from the environment. A relative path is
	// relative to the config file.
	CredentialsFile string `toml:"credentials_file"`
	PackSize        Size   `toml:"pack_size"`  // 4MiB..128MiB
	CacheSize       Size   `toml:"cache_size"` // local disk cache of packs
	Prefix          string `toml:"prefix"`     // key prefix inside the bucket
	// CreateOnly sends PUTs with If-None-Match: *, so that a pack is
	// never overwritten; turn off only for providers that reject it.
	CreateOnly bool `toml:"create_only"`
}

func defaultS3() S3 {
	return S3{Region: "us-east-1", PathStyle: true, PackSize: 16 << 20, CacheSize: 1 << 30, CreateOnly: true}
}

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// validateBackend checks store.backend and, for "s3", [store.s3].
func (s Store) validateBackend() error {
	switch s.Backend {
	case BackendLocal:
		return nil
	case BackendS3:
	default:
		return fmt.Errorf("store.backend %q: want %q or %q", s.Backend, BackendLocal, BackendS3)
	}
	c := s.S3
	u, err := url.Parse(c.Endpoint)
	if c.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("store.s3.endpoint %q: want http://host:port or https://host (store.backend = \"s3\" needs it)", c.Endpoint)
	}
	if u.User != nil {
		return fmt.Errorf("store.s3.endpoint: no user or password in the URL; keys go in store.s3.credentials_file")
	}
	if !bucketRE.MatchString(c.Bucket) {
		return fmt.Errorf("store.s3.bucket %q: want 3-63 of [a-z0-9.-], starting and ending with a letter or digit", c.Bucket)
	}
	if c.Region == "" {
		return fmt.Errorf("store.s3.region is empty (us-east-1 suits most self-hosted servers)")
	}
	if c.PackSize < 4<<20 || c.PackSize > 128<<20 {
		return fmt.Errorf("store.s3.pack_size %d: want 4MiB to 128MiB", c.PackSize)
	}
	if c.CacheSize < 2*c.PackSize {
		return fmt.Errorf("store.s3.cache_size %d: want at least twice store.s3.pack_size (%d)", c.CacheSize, 2*c.PackSize)
	}
	if strings.HasPrefix(c.Prefix, "/") || strings.Contains(c.Prefix, "//") {
		return fmt.Errorf("store.s3.prefix %q: no leading or doubled slash", c.Prefix)
	}
	return nil
}

// S3CacheDir is where the object-store backend keeps its local cache.
func (c *Config) S3CacheDir() string { return filepath.Join(c.StoreDir(), "s3cache") }
