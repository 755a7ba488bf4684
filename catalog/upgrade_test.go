package catalog

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// TestAdoptLegacyHostAccess: records from before csbs recorded who named
// a host path are adopted as the admin's once, so an upgrade keeps the
// operator's backups running; later records keep their own flag.
func TestAdoptLegacyHostAccess(t *testing.T) {
	c := newTestCatalog(t, Options{})
	now := time.Now()
	var srv Server
	err := c.Update(func(tx *Txn) error {
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

// TestEnsureIndexes: a catalog written before the indexes existed (its
// objects alone, as an older csbs left them) gets its indexes and
// counters built once at start; lookups then work, and a second start
// builds nothing. A catalog whose marker is older (an index definition
// changed) is rebuilt from its objects, dropping entries that no longer
// belong.
func TestEnsureIndexes(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	p := Project{ID: "prj-000000000001", Name: "team-a", Created: now}
	tok := Token{ID: "tok-000000000001", Project: p.ID, Name: "ci", Hash: HashSecret("s3cret"), Created: now}
	srv := Server{ID: "srv-000000000001", Project: p.ID, Name: "web1", Created: now}
	objs := map[string]any{"c/project/" + p.ID: p, "c/token/" + tok.ID: tok, "c/server/" + srv.ID: srv}
	for i := range 30 {
		b := Backup{ID: fmt.Sprintf("bk-%012d", i), Project: p.ID, ServerID: srv.ID, ServerName: srv.Name,
			Name: fmt.Sprintf("b%02d", i), Created: now.Add(time.Duration(i) * time.Hour), Status: StatusAvailable, Type: TypeEnhanced,
			Disks: []BackupDisk{{Name: "vda", Size: 1 << 20, NewBytes: 1000}}}
		objs["c/backup/"+b.ID] = b
	}
	err = db.Update(func(t *badger.Txn) error {
		for k, v := range objs {
			b, _ := json.Marshal(v)
			if err := t.Set([]byte(k), b); err != nil {
				return err
			}
		}
		// A stale entry of an older index definition.
		return t.Set([]byte("c/i/backup-name/gone/x/bk-000000000099"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	c := New(kv.New(db), Options{})
	if c.Check() == nil {
		t.Fatal("Check passed on a catalog without indexes")
	}
	n, err := c.EnsureIndexes()
	if err != nil || n != len(objs) {
		t.Fatalf("EnsureIndexes indexed %d objects (%v), want %d", n, err, len(objs))
	}
	checkCatalog(t, c)
	err = c.View(func(tx *Txn) error {
		if got, err := tx.TokenBySecret("s3cret"); err != nil || got.ID != tok.ID {
			t.Errorf("token lookup after the upgrade: %v %v", got.ID, err)
		}
		if b, err := tx.Backup(p.ID, "b07"); err != nil || b.ID != "bk-000000000007" {
			t.Errorf("backup by name after the upgrade: %v %v", b.ID, err)
		}
		st, err := tx.BackupStats(p.ID)
		if err != nil || st.Backups != 30 || st.LogicalBytes != 30<<20 {
			t.Errorf("backup counters after the upgrade: %+v %v", st, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.EnsureIndexes(); n != 0 || err != nil {
		t.Fatalf("second EnsureIndexes: %d %v", n, err)
	}
}
