package main

import (
	"flag"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"csbs/catalog"
)

// TestAPIPath: positional arguments go into API paths escaped, so that a
// reference cannot reach another endpoint.
func TestAPIPath(t *testing.T) {
	set := flag.NewFlagSet("t", flag.ContinueOnError)
	set.Parse([]string{"web 1", "../jobs?x=1"})
	c := cli.NewContext(cli.NewApp(), set, nil)
	for _, tc := range []struct {
		parts []any
		want  string
	}{
		{[]any{"/v1/servers/", 0}, "/v1/servers/web%201"},
		{[]any{"/v1/backups/", 1, "/attach"}, "/v1/backups/..%2Fjobs%3Fx=1/attach"},
		{[]any{"/v1/status"}, "/v1/status"},
	} {
		if got := apiPath(tc.parts...)(c); got != tc.want {
			t.Errorf("apiPath%v = %q, want %q", tc.parts, got, tc.want)
		}
	}
}

// TestStatusMaintenanceLine: status shows the gist of a gc or scrub note
// in a few words, whatever the note's length.
func TestStatusMaintenanceLine(t *testing.T) {
	for _, tc := range []struct {
		job  catalog.Job
		want string
	}{
		{catalog.Job{Note: "freed 12 blocks (768 KiB); disk 3.0 MiB -> 2.2 MiB; 1 packs deleted, 0 repacked; took 2ms"}, "freed 768 KiB"},
		{catalog.Job{Note: "checked 57 blocks (2.9 MiB) in 1 packs; no damage"}, "no damage"},
		{catalog.Job{Note: "checked 57 blocks (2.9 MiB) in 1 packs; 2 damaged blocks removed; damaged backups: a, b (a new backup of the same data repairs them)"}, "2 damaged blocks removed"},
		{catalog.Job{Error: "interrupted: the daemon stopped while the job was running; nothing of it became visible"}, "interrupted: the daemon stopped while the job was running; …"},
		{catalog.Job{Note: strings.Repeat("x", 100)}, strings.Repeat("x", statusNoteWidth-1) + "…"},
	} {
		if got := maintenanceResult(tc.job); got != tc.want {
			t.Errorf("maintenanceResult(%+v) = %q, want %q", tc.job, got, tc.want)
		}
	}
}
