package durable

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"csbs/internal/powerloss"
)

func TestMain(m *testing.M) {
	powerloss.Main()
	os.Exit(m.Run())
}

// After WriteFile returns, a power loss keeps the new content: a fresh
// file and a replaced one.
func TestWriteFileSurvivesPowerLoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  []byte // nil: no file before
	}{
		{name: "new file"},
		{name: "replace", old: []byte("old secret\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := powerloss.New(t, 64)
			path := filepath.Join(disk.Dir, "admin.token")
			if tc.old != nil {
				if err := WriteFile(path, tc.old, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			want := []byte("csbs_0123456789abcdef\n")
			if err := WriteFile(path, want, 0o600); err != nil {
				t.Fatal(err)
			}
			img := disk.Cut()
			got, err := os.ReadFile(filepath.Join(powerloss.Recover(t, img), "admin.token"))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after a power loss: %q, %v; want %q", got, err, want)
			}
		})
	}
}

func TestWriteFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := WriteFile(path, []byte("k"), 0o640); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
