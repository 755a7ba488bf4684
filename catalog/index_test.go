package catalog

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)

// fixture is a small catalog: two projects, servers, a policy, backups.
type fixture struct {
	c        *Catalog
	p1, p2   Project
	web, db  Server
	pol      Policy
	tokSec   string
	tok      Token
	backups  []Backup
	p2Backup Backup
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{c: newTestCatalog(t, Options{})}
	err := f.c.Update(func(tx *Txn) (err error) {
		if f.p1, err = tx.CreateProject("p1", t0); err != nil {
			return err
		}
		if f.p2, err = tx.CreateProject("p2", t0); err != nil {
			return err
		}
		if f.tok, f.tokSec, err = tx.CreateToken(f.p1.ID, "ci", t0); err != nil {
			return err
		}
		if f.web, err = tx.CreateServer(Server{Project: f.p1.ID, Name: "web", Created: t0}); err != nil {
			return err
		}
		if f.db, err = tx.CreateServer(Server{Project: f.p1.ID, Name: "db", Created: t0}); err != nil {
			return err
		}
		f.pol, err = tx.CreatePolicy(Policy{Project: f.p1.ID, Name: "daily", Enabled: true, Times: []string{"02:00"}, Period: PeriodDays, EveryN: 1, Timezone: "UTC", MaxBackups: 3, RetentionDays: -1})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		sv := f.web
		if i%3 == 2 {
			sv = f.db
		}
		f.backups = append(f.backups, f.putBackup(t, f.p1.ID, sv, fmt.Sprintf("b%d", i), t0.Add(time.Duration(i)*time.Hour), TypeEnhanced))
	}
	f.p2Backup = f.putBackup(t, f.p2.ID, Server{ID: "srv-00000000aaaa", Name: "web"}, "b0", t0, TypeEnhanced)
	return f
}

func (f *fixture) putBackup(t *testing.T, project string, sv Server, name string, created time.Time, typ string) Backup {
	t.Helper()
	b := Backup{ID: NewID(KindBackup), Project: project, ServerID: sv.ID, ServerName: sv.Name, Name: name,
		Created: created, Status: StatusAvailable, Type: typ,
		Disks: []BackupDisk{{Name: "vda", MapID: "m", Size: 1 << 20, NewBytes: 100, Blocks: 16}}}
	if err := f.c.Update(func(tx *Txn) error { return tx.PutBackup(b) }); err != nil {
		t.Fatal(err)
	}
	return b
}

func ids[T any](vs []T, id func(T) string) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, id(v))
	}
	return out
}

func backupIDs(bs []Backup) []string { return ids(bs, func(b Backup) string { return b.ID }) }

// TestIndexesFollowObjects changes objects of every indexed kind, one
// named step at a time, and after each step checks the indexes against
// the objects (Check) and that lookups through them answer what a scan
// of the objects would.
func TestIndexesFollowObjects(t *testing.T) {
	f := newFixture(t)
	steps := []struct {
		name   string
		change func(tx *Txn) error
		check  func(tx *Txn) error
	}{
		{"lookups by name", nil, func(tx *Txn) error {
			if p, err := tx.ProjectByName("p2"); err != nil || p.ID != f.p2.ID {
				return fmt.Errorf("project by name: %v %v", p.ID, err)
			}
			if s, err := tx.Server(f.p1.ID, "db"); err != nil || s.ID != f.db.ID {
				return fmt.Errorf("server by name: %v %v", s.ID, err)
			}
			if _, err := tx.Server(f.p2.ID, "db"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("another project's server by name: %v", err)
			}
			if b, err := tx.Backup(f.p1.ID, "b4"); err != nil || b.ID != f.backups[4].ID {
				return fmt.Errorf("backup by name: %v %v", b.ID, err)
			}
			if b, err := tx.Backup(f.p2.ID, "b0"); err != nil || b.ID != f.p2Backup.ID {
				return fmt.Errorf("the other project's backup b0: %v %v", b.ID, err)
			}
			if _, err := tx.Backup(f.p2.ID, f.backups[0].ID); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("another project's backup by id: %v", err)
			}
			if tk, err := tx.TokenBySecret(f.tokSec); err != nil || tk.ID != f.tok.ID {
				return fmt.Errorf("token by secret: %v %v", tk.ID, err)
			}
			return nil
		}},
		{"listings", nil, func(tx *Txn) error {
			bs, err := tx.Backups(f.p1.ID, BackupFilter{})
			want := []string{f.backups[5].ID, f.backups[4].ID, f.backups[3].ID, f.backups[2].ID, f.backups[1].ID, f.backups[0].ID}
			if err != nil || !slices.Equal(backupIDs(bs), want) {
				return fmt.Errorf("project listing newest first: %v %v", backupIDs(bs), err)
			}
			bs, err = tx.Backups(f.p1.ID, BackupFilter{ServerID: f.db.ID})
			if err != nil || !slices.Equal(backupIDs(bs), []string{f.backups[5].ID, f.backups[2].ID}) {
				return fmt.Errorf("server listing: %v %v", backupIDs(bs), err)
			}
			ss, err := tx.Servers(f.p1.ID)
			if err != nil || !slices.Equal(ids(ss, func(s Server) string { return s.Name }), []string{"db", "web"}) {
				return fmt.Errorf("servers by name: %v", err)
			}
			return nil
		}},
		{"bind a server", func(tx *Txn) error {
			f.web.PolicyID = f.pol.ID
			return tx.PutServer(f.web)
		}, func(tx *Txn) error {
			ss, err := tx.BoundServers(f.pol)
			if err != nil || len(ss) != 1 || ss[0].ID != f.web.ID {
				return fmt.Errorf("bound servers: %v %v", ss, err)
			}
			return nil
		}},
		{"rename a policy", func(tx *Txn) error {
			f.pol.Name = "nightly"
			_, err := tx.UpdatePolicy(f.pol)
			return err
		}, func(tx *Txn) error {
			if _, err := tx.Policy(f.p1.ID, "daily"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("old policy name still found: %v", err)
			}
			_, err := tx.Policy(f.p1.ID, "nightly")
			return err
		}},
		{"delete the policy unbinds", func(tx *Txn) error { return tx.DeletePolicy(f.pol) }, func(tx *Txn) error {
			s, err := tx.Server(f.p1.ID, f.web.ID)
			if err != nil || s.PolicyID != "" {
				return fmt.Errorf("server still bound: %+v %v", s, err)
			}
			return nil
		}},
		{"revoke the token", func(tx *Txn) error {
			f.tok.Revoked = true
			return tx.PutToken(f.tok)
		}, func(tx *Txn) error {
			if _, err := tx.TokenBySecret(f.tokSec); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("revoked token accepted: %v", err)
			}
			ts, err := tx.Tokens(f.p1.ID)
			if err != nil || len(ts) != 1 {
				return fmt.Errorf("the revoked token is no longer listed: %v %v", ts, err)
			}
			return nil
		}},
		{"scrub marks a backup damaged, another fails", func(tx *Txn) error {
			b := f.backups[1]
			b.Damaged = true
			if err := tx.PutBackup(b); err != nil {
				return err
			}
			b = f.backups[2]
			b.Status = StatusError
			return tx.PutBackup(b)
		}, func(tx *Txn) error {
			d, err := tx.FlaggedBackups(FlagDamaged, f.p1.ID)
			if err != nil || !slices.Equal(backupIDs(d), []string{f.backups[1].ID}) {
				return fmt.Errorf("damaged: %v %v", backupIDs(d), err)
			}
			e, err := tx.FlaggedBackups(FlagError, "")
			if err != nil || !slices.Equal(backupIDs(e), []string{f.backups[2].ID}) {
				return fmt.Errorf("error: %v %v", backupIDs(e), err)
			}
			st, err := tx.BackupStats(f.p1.ID)
			if err != nil || st.Backups != 6 || st.Damaged != 1 || st.ByStatus[StatusError] != 1 || st.ByStatus[StatusAvailable] != 5 || st.LogicalBytes != 6<<20 {
				return fmt.Errorf("stats: %+v %v", st, err)
			}
			// The failed backup left the FUSE tree.
			es, err := tx.MountBackups(f.p1.ID, "db", "")
			if err != nil || len(es) != 1 || es[0].Name != "b5" {
				return fmt.Errorf("mount entries of db: %+v %v", es, err)
			}
			return nil
		}},
		{"delete a backup", func(tx *Txn) error { return tx.DeleteBackup(f.backups[0]) }, func(tx *Txn) error {
			if _, err := tx.Backup(f.p1.ID, "b0"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("deleted backup found by name: %v", err)
			}
			if taken, err := tx.BackupNameTaken(f.p1.ID, f.web.ID, "b0"); taken || err != nil {
				return fmt.Errorf("name of a deleted backup taken: %v", err)
			}
			st, err := tx.BackupStats(f.p1.ID)
			if err != nil || st.Backups != 5 {
				return fmt.Errorf("stats after delete: %+v %v", st, err)
			}
			return nil
		}},
		{"jobs through their states", func(tx *Txn) error {
			for i, state := range []string{JobQueued, JobRunning, JobFailed, JobSucceeded} {
				j := Job{ID: fmt.Sprintf("job-00000000000%d", i), Project: f.p1.ID, Kind: JobBackup, State: state, Created: t0.Add(time.Duration(i) * time.Minute)}
				if j.Finished() {
					j.Ended = j.Created.Add(time.Second)
				}
				if err := tx.PutJob(j); err != nil {
					return err
				}
			}
			return nil
		}, func(tx *Txn) error {
			act, err := tx.ActiveJobs(f.p1.ID)
			if err != nil || len(act) != 2 || act[0].State != JobRunning || act[1].State != JobQueued {
				return fmt.Errorf("active jobs: %v %v", act, err)
			}
			if n, err := tx.FailedJobsSince(f.p1.ID, t0); n != 1 || err != nil {
				return fmt.Errorf("failed since: %d %v", n, err)
			}
			if n, err := tx.FailedJobsSince(f.p1.ID, t0.Add(time.Hour)); n != 0 || err != nil {
				return fmt.Errorf("failed since later: %d %v", n, err)
			}
			counts, err := tx.JobCounts()
			if err != nil || counts[[2]string{JobBackup, JobQueued}] != 1 || counts[[2]string{JobBackup, JobFailed}] != 1 {
				return fmt.Errorf("job counts: %v %v", counts, err)
			}
			if act, _ := tx.ActiveJobs(f.p2.ID); len(act) != 0 {
				return fmt.Errorf("p2 sees p1's active jobs: %v", act)
			}
			return nil
		}},
		{"a job finishes", func(tx *Txn) error {
			j, err := tx.Job("", "job-000000000001")
			if err != nil {
				return err
			}
			j.State, j.Ended = JobSucceeded, t0.Add(time.Hour)
			return tx.PutJob(j)
		}, func(tx *Txn) error {
			act, err := tx.ActiveJobs("")
			if err != nil || len(act) != 1 {
				return fmt.Errorf("active jobs: %v %v", act, err)
			}
			j, ok, err := tx.LastFinishedJob(JobBackup)
			if err != nil || !ok || j.ID != "job-000000000003" {
				return fmt.Errorf("last finished backup job: %v %v %v", j.ID, ok, err)
			}
			return nil
		}},
		{"replication: a remote, a policy on it, a replica state", func(tx *Txn) error {
			rm, err := tx.CreateRemote(Remote{Project: f.p1.ID, Name: "dr-site", URL: "https://dr:8443", Created: t0})
			if err != nil {
				return err
			}
			if _, err := tx.CreateReplication(Replication{Project: f.p1.ID, Name: "nightly", RemoteID: rm.ID, Times: []string{"03:00"}, Created: t0}); err != nil {
				return err
			}
			return tx.PutReplicaState(ReplicaState{ID: ReplicaStateID(rm.ID, "bk-000000000001"), Project: f.p1.ID, RemoteID: rm.ID, SourceBackupID: "bk-000000000001", State: ReplicaOK})
		}, func(tx *Txn) error {
			rm, err := tx.Remote(f.p1.ID, "dr-site")
			if err != nil {
				return err
			}
			if _, err := tx.Replication(f.p1.ID, "nightly"); err != nil {
				return err
			}
			if sts, err := tx.ReplicaStates(rm.ID); err != nil || len(sts) != 1 {
				return fmt.Errorf("replica states of the remote: %v %v", sts, err)
			}
			if err := tx.DeleteRemote(rm); !errors.Is(err, ErrConflict) {
				return fmt.Errorf("a remote in use deleted: %v", err)
			}
			if err := tx.DeleteProject(f.p1); !errors.Is(err, ErrConflict) {
				return fmt.Errorf("a project with a remote deleted: %v", err)
			}
			return nil
		}},
		{"delete a project's objects and the project", func(tx *Txn) error {
			if err := tx.DeleteBackup(f.p2Backup); err != nil {
				return err
			}
			return tx.DeleteProject(f.p2)
		}, func(tx *Txn) error {
			if _, err := tx.ProjectByName("p2"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("deleted project found: %v", err)
			}
			if err := tx.DeleteProject(f.p1); !errors.Is(err, ErrConflict) {
				return fmt.Errorf("a project with servers deleted: %v", err)
			}
			return nil
		}},
	}
	for _, s := range steps {
		if s.change != nil {
			if err := f.c.Update(s.change); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if err := f.c.Check(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if err := f.c.View(s.check); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
}

// TestPaging: pages of a listing joined give the whole listing; the
// cursor a page returns stays valid when its item is deleted; a bare id
// works as a cursor; an unknown id is refused with a message naming it.
func TestPaging(t *testing.T) {
	f := newFixture(t)
	for i := 6; i < 25; i++ {
		f.putBackup(t, f.p1.ID, f.web, fmt.Sprintf("b%d", i), t0.Add(time.Duration(i)*time.Hour), TypeCommon)
	}
	var all []Backup
	if err := f.c.View(func(tx *Txn) (err error) { all, err = tx.Backups(f.p1.ID, BackupFilter{}); return err }); err != nil {
		t.Fatal(err)
	}
	if len(all) != 25 {
		t.Fatalf("%d backups", len(all))
	}
	pageAll := func(limit int, f2 BackupFilter, between func(cursor string)) []string {
		var got []string
		after := ""
		for range 100 {
			var bs []Backup
			var next string
			err := f.c.View(func(tx *Txn) (err error) {
				bs, next, err = tx.BackupPage(f.p1.ID, f2, Page{Limit: limit, After: after})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(bs) > limit {
				t.Fatalf("page of %d with limit %d", len(bs), limit)
			}
			got = append(got, backupIDs(bs)...)
			if next == "" {
				return got
			}
			if between != nil {
				between(next)
			}
			after = next
		}
		t.Fatal("paging does not end")
		return nil
	}
	for _, limit := range []int{1, 7, 25, 100} {
		if got := pageAll(limit, BackupFilter{}, nil); !slices.Equal(got, backupIDs(all)) {
			t.Fatalf("limit %d: pages give %v, want %v", limit, got, backupIDs(all))
		}
	}
	enhanced := pageAll(2, BackupFilter{Type: TypeEnhanced}, nil)
	if len(enhanced) != 6 {
		t.Fatalf("enhanced pages: %v", enhanced)
	}
	// Delete the last item of each page before asking for the next.
	deleted := 0
	got := pageAll(5, BackupFilter{}, func(cursor string) {
		id := lastField(cursor)
		if err := f.c.Update(func(tx *Txn) error { return tx.DeleteBackup(Backup{ID: id}) }); err != nil {
			t.Fatal(err)
		}
		deleted++
	})
	if len(got) != 25 || deleted != 4 {
		t.Fatalf("paging while deleting: %d items, %d deleted", len(got), deleted)
	}
	// A bare id as cursor.
	var bs []Backup
	err := f.c.View(func(tx *Txn) (err error) {
		bs, _, err = tx.BackupPage(f.p1.ID, BackupFilter{}, Page{Limit: 2, After: all[0].ID})
		return err
	})
	if err != nil || len(bs) != 2 || bs[0].ID != all[1].ID {
		t.Fatalf("page after a bare id: %v %v", backupIDs(bs), err)
	}
	err = f.c.View(func(tx *Txn) error {
		_, _, err := tx.BackupPage(f.p1.ID, BackupFilter{}, Page{After: "bk-000000000000"})
		return err
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown cursor id: %v", err)
	}
}

// TestLookupsReadWhatTheyTouch counts what lookups read in a catalog
// with many objects in another project: a token check, a lookup by name
// and a small project's listing read their own objects only.
func TestLookupsReadWhatTheyTouch(t *testing.T) {
	f := newFixture(t)
	err := f.c.Update(func(tx *Txn) error {
		for i := range 2000 {
			b := Backup{ID: NewID(KindBackup), Project: f.p1.ID, ServerID: f.db.ID, ServerName: "db", Name: fmt.Sprintf("x%d", i),
				Created: t0.Add(time.Duration(i) * time.Second), Status: StatusAvailable, Type: TypeEnhanced}
			if err := tx.PutBackup(b); err != nil {
				return err
			}
			if _, _, err := tx.CreateToken(f.p1.ID, "t", t0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name             string
		fn               func(tx *Txn) error
		objects, entries int64
	}{
		{"token check", func(tx *Txn) error { _, err := tx.TokenBySecret(f.tokSec); return err }, 1, 1},
		{"unknown token", func(tx *Txn) error { _, _ = tx.TokenBySecret("nope"); return nil }, 0, 0},
		{"backup by name", func(tx *Txn) error { _, err := tx.Backup(f.p1.ID, "x1234"); return err }, 1, 1},
		{"backup by id", func(tx *Txn) error { _, err := tx.Backup(f.p1.ID, f.backups[0].ID); return err }, 1, 0},
		{"project by name", func(tx *Txn) error { _, err := tx.ProjectByName("p2"); return err }, 1, 1},
		{"the small project's listing", func(tx *Txn) error { _, err := tx.Backups(f.p2.ID, BackupFilter{}); return err }, 1, 1},
		{"a server's listing", func(tx *Txn) error { _, err := tx.Backups(f.p1.ID, BackupFilter{ServerID: f.web.ID}); return err }, 4, 4},
		{"a page of the big listing", func(tx *Txn) error {
			_, _, err := tx.BackupPage(f.p1.ID, BackupFilter{}, Page{Limit: 10})
			return err
		}, 10, 11},
		{"stats of the big project", func(tx *Txn) error { _, err := tx.BackupStats(f.p1.ID); return err }, 0, 0},
		{"FUSE servers of the big project", func(tx *Txn) error { _, err := tx.MountServers(f.p1.ID, ""); return err }, 0, 4},
		{"FUSE lookup of one backup", func(tx *Txn) error { _, err := tx.MountBackup(f.p1.ID, "db", "x77", ""); return err }, 0, 1},
	}
	for _, tc := range cases {
		before := f.c.ReadStats()
		if err := f.c.View(tc.fn); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		after := f.c.ReadStats()
		if o, e := after.Objects-before.Objects, after.IndexEntries-before.IndexEntries; o != tc.objects || e != tc.entries {
			t.Errorf("%s read %d objects and %d index entries, want %d and %d", tc.name, o, e, tc.objects, tc.entries)
		}
	}
}

// TestCountersFold: many writes to one counter group leave its deltas
// folded into a bounded number of keys, and the sums stay exact.
func TestCountersFold(t *testing.T) {
	c := newTestCatalog(t, Options{})
	for i := range 300 {
		j := Job{ID: fmt.Sprintf("job-%012d", i), Project: "prj-1", Kind: JobGC, State: JobQueued, Created: t0}
		if err := c.Release(func(tx *Txn) error { return tx.PutJob(j) }); err != nil {
			t.Fatal(err)
		}
		j.State, j.Ended = JobSucceeded, t0
		if err := c.Release(func(tx *Txn) error { return tx.PutJob(j) }); err != nil {
			t.Fatal(err)
		}
	}
	keys := 0
	var counts map[[2]string]int64
	err := c.View(func(tx *Txn) error {
		err := tx.scanCounters(grpJobs, func([]byte, map[string]int64) { keys++ })
		if err != nil {
			return err
		}
		counts, err = tx.JobCounts()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if keys > foldAt+1 {
		t.Errorf("%d counter keys after 600 writes; folding should keep them at most %d", keys, foldAt+1)
	}
	if counts[[2]string{JobGC, JobSucceeded}] != 300 || counts[[2]string{JobGC, JobQueued}] != 0 {
		t.Errorf("counts %v", counts)
	}
}
