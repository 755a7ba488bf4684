package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"csbs/internal/testdisk"
)

// TestListingPages: `ls --limit N` prints an array of at most N (the
// JSON shape of an unpaged listing), says on stderr how to get the next
// page, and following the cursors gives the whole listing in order,
// also when the last item of a page is deleted before the next page is
// asked for.
func TestListingPages(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	img := testdisk.Sparse(t, a.dir, 1<<20, 100, 0)
	for i := range 2 {
		a.ok("server", "add", "--name", fmt.Sprintf("web%d", i), "--disk", "vda="+img)
	}
	for i := range 7 {
		a.ok("backup", "create", fmt.Sprintf("web%d", i%2), "--name", fmt.Sprintf("b%d", i), "--wait")
	}
	var all []idName
	a.okJSON(&all, "backup", "ls")
	if len(all) != 7 {
		t.Fatalf("%d backups", len(all))
	}
	page := func(args ...string) ([]idName, string) {
		t.Helper()
		out, errOut, code := a.run(nil, append([]string{"backup", "ls", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("backup ls %v: %s", args, errOut)
		}
		var bs []idName
		if err := json.Unmarshal([]byte(out), &bs); err != nil {
			t.Fatalf("backup ls %v: not a JSON array: %v\n%s", args, err, out)
		}
		_, next, _ := strings.Cut(strings.TrimSpace(errOut), "--after ")
		return bs, next
	}
	walk := func(limit string, deleteLast bool) []string {
		var got []string
		var args []string
		for range 20 {
			bs, next := page(append([]string{"--limit", limit}, args...)...)
			for _, b := range bs {
				got = append(got, b.Name)
			}
			if next == "" {
				return got
			}
			if deleteLast {
				a.ok("backup", "rm", bs[len(bs)-1].ID)
			}
			args = []string{"--after", next}
		}
		t.Fatal("pages do not end")
		return nil
	}
	var names []string
	for _, b := range all {
		names = append(names, b.Name)
	}
	for _, limit := range []string{"1", "3", "7"} {
		if got := walk(limit, false); !slices.Equal(got, names) {
			t.Fatalf("--limit %s: pages give %v, want %v", limit, got, names)
		}
	}
	if bs, next := page("--limit", "2", "--server", "web1"); len(bs) != 2 || next == "" {
		t.Fatalf("a server's first page: %v, next %q", bs, next)
	}
	if bs, _ := page("--after", all[4].ID); len(bs) != 2 || bs[0].ID != all[5].ID {
		t.Fatalf("after a backup's id: %v", bs)
	}
	a.fails(nil, "limit", "backup", "ls", "--limit", "-1")
	a.fails(nil, "no backup with that id", "backup", "ls", "--after", "bk-000000000000")
	if got := walk("3", true); !slices.Equal(got, names) {
		t.Fatalf("pages while deleting: %v, want %v", got, names)
	}
}
