package access

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree builds a host layout in a temp dir and returns its root:
//
//	data/            the appliance's data dir (store/MANIFEST, admin.token)
//	run/api.sock     an API socket configured outside the data dir
//	teams/a/         granted to project a for sources and targets
//	teams/a/out      -> /outside/secret (symlink out of the grant)
//	teams/a/in       -> teams/a/disk.img
//	teams/a/store    -> data/store (symlink into the data dir)
//	shared/          granted to every project for mounts
//	outside/secret
//	datalink         -> data
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"data/store", "run", "teams/a", "teams/b", "shared", "outside"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"data/store/MANIFEST", "data/admin.token", "run/api.sock", "teams/a/disk.img", "teams/b/disk.img", "shared/disk.img", "outside/secret"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for link, to := range map[string]string{
		"teams/a/out":   filepath.Join(root, "outside/secret"),
		"teams/a/in":    "disk.img",
		"teams/a/store": filepath.Join(root, "data/store"),
		"teams/a/gone":  filepath.Join(root, "outside/nothing"),
		"datalink":      "data",
	} {
		if err := os.Symlink(to, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckPath(t *testing.T) {
	root := tree(t)
	p := func(rel string) string { return filepath.Join(root, rel) }
	rules := &Rules{
		Protected: []string{p("data"), p("run/api.sock"), p("data/nbd.sock")},
		Global:    Grant{MountDirs: []string{p("shared")}, TargetDirs: []string{root}}, // a grant that contains the data dir
		Projects: map[string]Grant{
			"a": {SourceDirs: []string{p("teams/a")}, TargetDirs: []string{p("teams/a")}},
		},
	}
	withAllowed := &Rules{Protected: rules.Protected, AllowedSources: []string{p("teams")}}
	admin := Caller{Admin: true, Project: "default"}
	a := Caller{Project: "a"}
	b := Caller{Project: "b"}
	const ok = ""
	cases := []struct {
		name   string
		rules  *Rules
		caller Caller
		use    Use
		path   string
		want   string // "" = allowed, else a substring of the refusal
	}{
		// The appliance's own data: nobody, whatever the grant.
		{"admin: store file", rules, admin, Target, p("data/store/MANIFEST"), "inside the appliance's own data"},
		{"admin: admin token", rules, admin, Source, p("data/admin.token"), "inside the appliance's own data"},
		{"admin: data dir itself", rules, admin, Mount, p("data"), "inside the appliance's own data"},
		{"admin: new file in data dir", rules, admin, Target, p("data/store/new.img"), "inside the appliance's own data"},
		{"admin: mount below data dir", rules, admin, Mount, p("data/mnt/x"), "inside the appliance's own data"},
		{"admin: socket outside data dir", rules, admin, Target, p("run/api.sock"), "inside the appliance's own data"},
		{"admin: via symlink to data dir", rules, admin, Target, p("datalink/store/MANIFEST"), "resolves to " + p("data/store/MANIFEST")},
		{"admin: symlinked dir into data dir", rules, admin, Target, p("teams/a/store/MANIFEST"), "inside the appliance's own data"},
		{"project: target grant holds the data dir", rules, a, Target, p("data/admin.token"), "inside the appliance's own data"},
		{"project: ../ into data dir", rules, a, Target, p("teams/a/../../data/x"), "inside the appliance's own data"},
		// The admin may name anything else.
		{"admin: outside file", rules, admin, Source, p("outside/secret"), ok},
		{"admin: /etc/shadow", rules, admin, Source, "/etc/shadow", ok},
		{"admin: new target anywhere", rules, admin, Target, p("outside/new.img"), ok},
		{"admin: mount anywhere", rules, admin, Mount, p("outside/mnt"), ok},
		{"admin: symlink out", rules, admin, Source, p("teams/a/out"), ok},
		// A project token: only what is granted, for that use.
		{"a: source in its dir", rules, a, Source, p("teams/a/disk.img"), ok},
		{"a: symlink inside its dir", rules, a, Source, p("teams/a/in"), ok},
		{"a: symlink out of its dir", rules, a, Source, p("teams/a/out"), "resolves to " + p("outside/secret")},
		{"a: dangling symlink", rules, a, Target, p("teams/a/gone"), "symlink to a missing file"},
		{"a: /etc/shadow", rules, a, Source, "/etc/shadow", "access.source_dirs or access.projects.a.source_dirs"},
		{"a: other project's dir", rules, a, Source, p("teams/b/disk.img"), "granted: " + p("teams/a")},
		{"a: new target in its dir", rules, a, Target, p("teams/a/new/r.img"), ok},
		{"a: target outside", rules, a, Target, p("outside/r.img"), ok}, // the global target grant is root: all but the data dir
		{"a: mount in the global grant", rules, a, Mount, p("shared/m"), ok},
		{"a: mount outside", rules, a, Mount, p("teams/a/m"), "access.mount_dirs or access.projects.a.mount_dirs"},
		{"a: prefix is not a parent", rules, a, Source, p("teams/ab"), "access.source_dirs"},
		{"b: nothing of its own", rules, b, Source, p("teams/b/disk.img"), "none is granted"},
		{"b: global mount grant", rules, b, Mount, p("shared"), ok},
		{"zero rules: project gets nothing", &Rules{}, a, Source, p("teams/a/disk.img"), "none is granted"},
		{"zero rules: admin anything", &Rules{}, admin, Source, p("teams/a/disk.img"), ok},
		// sources.allowed_dirs restricts everyone's sources, and only sources.
		{"allowed_dirs: admin inside", withAllowed, admin, Source, p("teams/b/disk.img"), ok},
		{"allowed_dirs: admin outside", withAllowed, admin, Source, p("outside/secret"), "outside sources.allowed_dirs"},
		{"allowed_dirs: admin symlink out", withAllowed, admin, Source, p("teams/a/out"), "outside sources.allowed_dirs"},
		{"allowed_dirs: admin target elsewhere", withAllowed, admin, Target, p("outside/r.img"), ok},
		{"allowed_dirs: project still needs a grant", withAllowed, a, Source, p("teams/a/disk.img"), "none is granted"},
		// Fail closed.
		{"relative path", rules, admin, Target, "var/store/MANIFEST", "not an absolute path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			real, err := Resolve(tc.path)
			if err == nil {
				err = tc.rules.CheckPath(tc.caller, tc.use, tc.path, real)
			}
			if tc.want == ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal containing %q", err, tc.want)
			}
		})
	}
	// A refusal is ErrDenied, and names the path.
	err := rules.CheckPath(a, Source, "/etc/shadow", "/etc/shadow")
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "disk source /etc/shadow") {
		t.Fatalf("refusal %v", err)
	}
	// A relative path compared with an absolute data dir would match
	// nothing; CheckPath refuses it instead of letting it through.
	if err := rules.CheckPath(admin, Target, "data/store/MANIFEST", p("data/store/MANIFEST")); err == nil {
		t.Fatal("relative named path accepted")
	}
	relRules := &Rules{Protected: []string{"data"}}
	if err := relRules.CheckPath(admin, Target, p("x"), p("x")); err == nil {
		t.Fatal("a relative protected path was not refused")
	}
}

func TestCheckNBDHost(t *testing.T) {
	rules := &Rules{
		Global:   Grant{NBDHosts: []string{"10.0.0.5"}},
		Projects: map[string]Grant{"a": {NBDHosts: []string{"nbd.example:10810", "[fd00::1]"}}, "any": {NBDHosts: []string{"*"}}},
	}
	cases := []struct {
		caller   Caller
		hostport string
		ok       bool
	}{
		{Caller{Admin: true}, "203.0.113.9:10809", true},
		{Caller{Project: "b"}, "10.0.0.5:10809", true}, // global host, any port
		{Caller{Project: "b"}, "10.0.0.6:10809", false},
		{Caller{Project: "b"}, "nbd.example:10810", false},
		{Caller{Project: "a"}, "nbd.example:10810", true},
		{Caller{Project: "a"}, "NBD.example:10810", true},
		{Caller{Project: "a"}, "nbd.example:10809", false}, // port given in the grant
		{Caller{Project: "a"}, "[fd00::1]:10809", true},
		{Caller{Project: "any"}, "198.51.100.1:1", true},
		{Caller{Project: "a"}, "no-port", false},
	}
	for _, tc := range cases {
		err := rules.CheckNBDHost(tc.caller, "nbd://"+tc.hostport+"/x", tc.hostport)
		if (err == nil) != tc.ok {
			t.Errorf("%+v %s: %v, want ok=%v", tc.caller, tc.hostport, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrDenied) {
			t.Errorf("%s: not ErrDenied: %v", tc.hostport, err)
		}
	}
	err := rules.CheckNBDHost(Caller{Project: "b"}, "nbd://10.0.0.6/x", "10.0.0.6:10809")
	if err == nil || !strings.Contains(err.Error(), "access.nbd_hosts or access.projects.b.nbd_hosts") {
		t.Fatalf("message: %v", err)
	}
}

func TestResolve(t *testing.T) {
	root := tree(t)
	for in, want := range map[string]string{
		root + "/teams/a/in":          root + "/teams/a/disk.img",
		root + "/datalink/new/x.img":  root + "/data/new/x.img",
		root + "/teams/a/../b/./new":  root + "/teams/b/new",
		root + "/nothing/at/all":      root + "/nothing/at/all",
		root + "/teams/a/store/thing": root + "/data/store/thing",
	} {
		got, err := Resolve(in)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"relative/path", root + "/teams/a/gone", root + "/teams/a/gone/below"} {
		if got, err := Resolve(bad); err == nil {
			t.Errorf("Resolve(%s) = %s, want an error", bad, got)
		}
	}
}
