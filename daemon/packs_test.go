package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A store keeps the backend it was created with: opening it on another
// backend, bucket or prefix is refused before anything is written.
func TestStoreKeepsItsBackend(t *testing.T) {
	const s3a, s3b = "s3 bucket=csbs prefix=", "s3 bucket=other prefix="
	for _, tc := range []struct {
		name     string
		manifest bool   // an existing Badger store
		recorded string // the backend file's content, "" for none
		want     string
		err      string
	}{
		{"new store, local", false, "", "local", ""},
		{"new store, s3", false, "", s3a, ""},
		{"old local store stays local", true, "", "local", ""},
		{"old local store to s3", true, "", s3a, "created with local packs"},
		{"local to s3", true, "local", s3a, `keeps its packs in "local"`},
		{"s3 to local", true, s3a, "local", `keeps its packs in "s3 bucket=csbs prefix="`},
		{"another bucket", true, s3a, s3b, "cannot move between backends"},
		{"same bucket", true, s3a, s3a, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			if tc.manifest || tc.recorded != "" {
				os.MkdirAll(dir, 0o700)
			}
			if tc.manifest {
				os.WriteFile(filepath.Join(dir, "MANIFEST"), nil, 0o600)
			}
			if tc.recorded != "" {
				os.WriteFile(filepath.Join(dir, backendFile), []byte(tc.recorded+"\n"), 0o600)
			}
			err := checkBackend(dir, tc.want)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if _, serr := os.Stat(dir); !tc.manifest && tc.recorded == "" && serr == nil {
					t.Error("checkBackend created the store directory before the store was opened")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}
