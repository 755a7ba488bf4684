package qemu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"csbs/internal/testvm"
)

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		name, uri string
		want      Target
		err       string
	}{
		{"node and socket", "qmp+unix:///vda?socket=/run/vm1.qmp", Target{Ref: "vda", Socket: "/run/vm1.qmp"}, ""},
		{"with agent", "qmp+unix:///drive-virtio-disk0?socket=/run/vm1.qmp&qga=/run/vm1.qga", Target{Ref: "drive-virtio-disk0", Socket: "/run/vm1.qmp", Agent: "/run/vm1.qga"}, ""},
		{"agent off", "qmp+unix:///vda?socket=/run/vm1.qmp&qga=none", Target{Ref: "vda", Socket: "/run/vm1.qmp", Agent: "none"}, ""},
		{"no node", "qmp+unix:///?socket=/run/vm1.qmp", Target{}, "name the QEMU block node"},
		{"no socket", "qmp+unix:///vda", Target{}, "socket=PATH"},
		{"relative socket", "qmp+unix:///vda?socket=run/vm1.qmp", Target{}, "absolute path"},
		{"relative agent", "qmp+unix:///vda?socket=/run/vm1.qmp&qga=vm1.qga", Target{}, "qga=PATH must be an absolute path"},
		{"host", "qmp+unix://host/vda?socket=/run/vm1.qmp", Target{}, "no host allowed"},
		{"other scheme", "nbd+unix:///vda?socket=/run/x", Target{}, "want qmp+unix://"},
		{"unknown parameter", "qmp+unix:///vda?socket=/run/vm1.qmp&dirty-bitmap=b0", Target{}, `unknown parameter "dirty-bitmap"`},
		{"node path", "qmp+unix:///a/b?socket=/run/vm1.qmp", Target{}, "name the QEMU block node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseURI(tc.uri)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseURI(%q) = %+v, %v; want error %q", tc.uri, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseURI(%q) = %+v, %v; want %+v", tc.uri, got, err, tc.want)
			}
			if back, err := ParseURI(got.URI()); err != nil || back != got {
				t.Fatalf("URI() round trip: %q → %+v, %v", got.URI(), back, err)
			}
		})
	}
}

func TestDiskName(t *testing.T) {
	used := map[string]bool{}
	for _, tc := range []struct {
		ref  string
		i    int
		want string
	}{
		{"vda", 0, "vda"},
		{"virtio-disk1", 1, "virtiodisk1"},
		{"vda", 2, "disk2"}, // taken
		{"0bad", 3, "disk3"},
		{"", 4, "disk4"},
		{"scsi0-0-0-0-very-long-name", 5, "scsi0000verylong"},
		{"VDB", 6, "vdb"},
	} {
		if got := diskName(tc.ref, tc.i, used); got != tc.want {
			t.Errorf("diskName(%q, %d) = %q, want %q", tc.ref, tc.i, got, tc.want)
		}
	}
}

func listBitmaps(t *testing.T, vm *testvm.VM) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bms, err := vm.Bitmaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range bms {
		out = append(out, b.Name)
	}
	slices.Sort(out)
	return out
}

// noCSBSObjects fails if a node, job or export of csbs is in the VM.
func noCSBSObjects(t *testing.T, vm *testvm.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, q := range []string{"query-named-block-nodes", "query-block-jobs", "query-block-exports", "query-jobs"} {
		raw, err := vm.Command(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), `"node-name": "csbs-`) || strings.Contains(string(raw), `"id": "csbs-`) || strings.Contains(string(raw), `"device": "csbs-`) {
			t.Fatalf("%s: csbs objects left in the VM: %s", q, raw)
		}
	}
}

// crash abandons a session as a killed csbs would: the monitor
// connection closes, nothing is cleaned up.
func crash(s *Session) { s.c.Close() }

// TestRecoverInterruptedSessions: after csbs dies mid-backup, Recover
// removes every object the session added, thaws a guest left frozen, and
// keeps the right bitmap: the parent's if the backup was not saved, the
// new one if it was.
func TestRecoverInterruptedSessions(t *testing.T) {
	g := testvm.Build(t)
	vm := testvm.Start(t, g, testvm.Options{})
	root, err := os.MkdirTemp("", "csbsq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	open := func(id, parent string) *Session {
		t.Helper()
		s, err := Begin(ctx, Options{Socket: vm.QMP, Dir: filepath.Join(root, id), ID: id, Disks: []DiskSpec{{
			Name: "vda", Ref: "vda", ParentBitmap: parent, ParentSize: 64 << 20, NewBitmap: "csbs-t-vda-" + id, StalePrefix: "csbs-t-vda-",
		}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	never := func(string) (bool, error) { return false, nil }
	always := func(string) (bool, error) { return true, nil }

	// A first backup, ended normally: its bitmap stays.
	s := open("b1", "")
	if s.Consistency() != FSConsistent {
		t.Fatalf("consistency %q, notes %v", s.Consistency(), s.Notes())
	}
	if d := s.Disks()[0]; d.CBT || !strings.Contains(d.FullReason, "no earlier backup") || !d.Persistent {
		t.Fatalf("first session disk: %+v", d)
	}
	if err := s.End(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := listBitmaps(t, vm); !slices.Equal(got, []string{"csbs-t-vda-b1"}) {
		t.Fatalf("bitmaps after the first backup: %v", got)
	}

	// Crash before the backup was saved: the new bitmap goes, the
	// parent's stays.
	s = open("b2", "csbs-t-vda-b1")
	if d := s.Disks()[0]; !d.CBT {
		t.Fatalf("second session not incremental: %s", d.FullReason)
	}
	crash(s)
	if err := Recover(ctx, root, vm.QMP, never, nil); err != nil {
		t.Fatal(err)
	}
	noCSBSObjects(t, vm)
	if got := listBitmaps(t, vm); !slices.Equal(got, []string{"csbs-t-vda-b1"}) {
		t.Fatalf("bitmaps after recovering an unsaved backup: %v", got)
	}

	// Crash after the backup was saved, with the guest left frozen: the
	// guest is thawed, the parent's bitmap goes, the new one stays.
	s = open("b3", "csbs-t-vda-b1")
	crash(s)
	a, err := DialAgent(ctx, vm.QGA, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := a.Freeze(ctx); err != nil || n == 0 {
		t.Fatalf("freeze: %d, %v", n, err)
	}
	a.Close()
	rec := filepath.Join(root, "b3", stateFile)
	var st state
	b, _ := os.ReadFile(rec)
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	st.Frozen, st.Agent, st.path = true, vm.QGA, rec
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	if err := Recover(ctx, root, vm.QMP, always, nil); err != nil {
		t.Fatal(err)
	}
	noCSBSObjects(t, vm)
	if got := listBitmaps(t, vm); !slices.Equal(got, []string{"csbs-t-vda-b3"}) {
		t.Fatalf("bitmaps after recovering a saved backup: %v", got)
	}
	a, err = DialAgent(ctx, vm.QGA, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := a.FreezeStatus(ctx); err != nil || st != "thawed" {
		t.Fatalf("guest after recovery: %q, %v", st, err)
	}
	a.Close()
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("session dirs left: %v", ents)
	}
	// The writer kept going through all of it.
	if err := vm.WaitSynced(ctx, vm.Synced()+3); err != nil {
		t.Fatal(err)
	}

	// A session whose VM is gone is simply forgotten.
	s = open("b4", "csbs-t-vda-b3")
	crash(s)
	vm.Kill()
	if err := Recover(ctx, root, "", always, nil); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("session dirs left after the VM went away: %v", ents)
	}
}
