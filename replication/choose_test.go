package replication

import (
	"reflect"
	"testing"
	"time"

	"csbs/remote"
)

func TestChoose(t *testing.T) {
	at := func(h int) time.Time { return time.Date(2030, 1, 1, h, 0, 0, 0, time.UTC) }
	b := func(id, server string, h int, mod ...func(*remote.BackupInfo)) remote.BackupInfo {
		x := remote.BackupInfo{ID: id, Name: id, ServerID: server, Created: at(h), Status: "available", Disks: []remote.DiskInfo{{Name: "vda"}}}
		for _, m := range mod {
			m(&x)
		}
		return x
	}
	damaged := func(x *remote.BackupInfo) { x.Damaged = true }
	replica := func(x *remote.BackupInfo) { x.Replica = true }
	creating := func(x *remote.BackupInfo) { x.Status = "creating" }
	// Newest first, as the remote lists them.
	list := []remote.BackupInfo{
		b("a4", "A", 10), b("b3", "B", 9, damaged), b("a3", "A", 8, replica), b("b2", "B", 7),
		b("a2", "A", 6), b("a1", "A", 5), b("b1", "B", 4, creating), b("b0", "B", 3),
	}
	for _, tc := range []struct {
		last int
		want []string
	}{
		{1, []string{"b2", "a4"}},
		{2, []string{"b0", "a2", "b2", "a4"}},
		{9, []string{"b0", "a1", "a2", "b2", "a4"}},
	} {
		var got []string
		for _, x := range Choose(list, tc.last) {
			got = append(got, x.ID)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("last %d: %v, want %v (per server the newest qualifying, oldest first)", tc.last, got, tc.want)
		}
	}
}
