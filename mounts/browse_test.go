package mounts

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"csbs/catalog"
	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

// TestBrowse loop-mounts a real ext4 image served through the tree,
// reads a file back from it, sees the backup's disk open while browsed,
// and leaves nothing open or mounted after Unbrowse.
func TestBrowse(t *testing.T) {
	testenv.NeedFUSE(t)
	testenv.NeedTools(t, "losetup")
	e := newEnv(t)
	p := e.project(t, "p1")
	img := testdisk.Ext4(t, e.dir, 32, 4, 5)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	b := catalog.Backup{ID: catalog.NewID(catalog.KindBackup), Project: p.ID, ServerID: "srv-000000000001", ServerName: "web1", Name: "golden",
		Created: e.now, Status: catalog.StatusAvailable, Type: catalog.TypeEnhanced, Disks: []catalog.BackupDisk{{Name: "vda", MapID: "m", Size: fi.Size()}}}
	common := b
	common.ID, common.Name, common.Type = catalog.NewID(catalog.KindBackup), "plain", catalog.TypeCommon
	if err := e.cat.Update(func(tx *catalog.Txn) error { return errors.Join(tx.PutBackup(b), tx.PutBackup(common)) }); err != nil {
		t.Fatal(err)
	}
	e.disks.files[b.ID] = img

	files := filepath.Join(e.dir, "files")
	if _, err := e.mgr.Browse(common, "vda", files, true); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("browse of a Common backup: %v", err)
	}
	if _, err := e.mgr.Browse(b, "vdz", files, true); !errors.Is(err, catalog.ErrInvalid) {
		t.Fatalf("browse of a missing disk: %v", err)
	}
	rec, err := e.mgr.Browse(b, "vda", files, true)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Browse || rec.Backup != b.ID {
		t.Fatalf("record %+v", rec)
	}
	if _, err := os.ReadDir(filepath.Join(files, "var", "log")); err != nil {
		t.Fatalf("browsed file system: %v", err)
	}
	if want, err := os.ReadFile("/usr/share/common-licenses/GPL-3"); err == nil {
		got, err := os.ReadFile(filepath.Join(files, "licenses", "GPL-3"))
		if err != nil || string(got) != string(want) {
			t.Fatalf("file from the browsed backup: %v", err)
		}
	}
	if e.disks.opened() == 0 {
		t.Fatal("the backup's disk is not open (in use) while browsed")
	}
	if got := e.mgr.List(p.ID); len(got) != 1 || got[0].Path != files {
		t.Fatalf("mounts: %+v", got)
	}
	if err := e.mgr.Unbrowse(p.ID, files); err != nil {
		t.Fatal(err)
	}
	if e.disks.opened() != 0 {
		t.Fatalf("%d disks open after unbrowse", e.disks.opened())
	}
	if err := e.mgr.Unbrowse(p.ID, files); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("second unbrowse: %v", err)
	}
}
