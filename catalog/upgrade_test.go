package catalog

import (
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// TestAdoptLegacyHostAccess: records from before csbs recorded who named
// a host path are adopted as the admin's once, so an upgrade keeps the
// operator's backups running; later records keep their own flag.
func TestAdoptLegacyHostAccess(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := New(kv.New(db), Options{})
	now := time.Now()
	var srv Server
	err = c.Update(func(tx *Txn) error {
		p, err := tx.CreateProject("team-a", now)
		if err != nil {
			return err
		}
		srv, err = tx.CreateServer(Server{Project: p.ID, Name: "web1", Disks: []Disk{{Name: "vda", Source: "/srv/web1.img"}}})
		if err != nil {
			return err
		}
		return tx.PutMountRecord(MountRecord{Path: "/mnt/a", Project: p.ID})
	})
	if err != nil {
		t.Fatal(err)
	}
	var adopted []string
	if err := c.Update(func(tx *Txn) (err error) { adopted, err = tx.AdoptLegacyHostAccess(); return err }); err != nil {
		t.Fatal(err)
	}
	if len(adopted) != 2 {
		t.Fatalf("adopted %q, want the disk and the mount", adopted)
	}
	err = c.View(func(tx *Txn) error {
		s, err := tx.Server(srv.Project, srv.ID)
		if err == nil && !s.Disks[0].ByAdmin {
			t.Error("legacy disk not adopted")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Once only: a project token's server added after the upgrade stays its own.
	err = c.Update(func(tx *Txn) error {
		_, err := tx.CreateServer(Server{Project: srv.Project, Name: "web2", Disks: []Disk{{Name: "vda", Source: "/srv/web2.img"}}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Update(func(tx *Txn) (err error) { adopted, err = tx.AdoptLegacyHostAccess(); return err }); err != nil || len(adopted) != 0 {
		t.Fatalf("second adoption: %q %v", adopted, err)
	}
}
