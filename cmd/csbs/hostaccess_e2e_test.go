package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

// TestDataDirOffLimits is the hostile tester's session on the README's
// own setup: the real binary started as `make run` starts it (`csbs
// serve`, no --config, in a fresh working directory, data in ./var),
// and as `--data-dir var2` and a relative `--config`. Every way of
// naming the appliance's own data as a restore target, disk source,
// mount or browse path, with relative paths as a user types them and
// through a symlink, is refused with a clear error; afterwards the
// store opens after a restart and a backup restores byte for byte.
func TestDataDirOffLimits(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "mkfs.ext4")
	for _, mode := range []struct {
		name   string
		global []string
		config string // written to etc/csbs.toml
		data   string // the data dir, relative to the working directory
	}{
		{"make run", nil, "", "var"},
		{"data-dir var2", []string{"--data-dir", "var2"}, "", "var2"},
		{"relative config", []string{"--config", "etc/csbs.toml"}, "data_dir = \"data\"\n", "etc/data"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			wd := t.TempDir()
			if mode.config != "" {
				os.Mkdir(filepath.Join(wd, "etc"), 0o755)
				if err := os.WriteFile(filepath.Join(wd, "etc/csbs.toml"), []byte(mode.config), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			a := &appliance{t: t, dir: wd, wd: wd, global: mode.global, logs: &bytes.Buffer{}}
			a.start()
			t.Cleanup(a.stop)
			img := testdisk.Ext4(t, wd, 16, 2, 5)
			a.ok("server", "add", "--name", "web1", "--disk", "vda="+filepath.Base(img))
			a.ok("backup", "create", "web1", "--full", "--enable-instant-restore", "--name", "B", "--wait")

			data := mode.data
			entries, err := os.ReadDir(filepath.Join(wd, data, "store"))
			if err != nil || len(entries) == 0 {
				t.Fatalf("store files: %v", err)
			}
			var storeFiles []string
			for _, e := range entries {
				storeFiles = append(storeFiles, e.Name())
			}
			if err := os.Symlink(data, filepath.Join(wd, "link")); err != nil {
				t.Fatal(err)
			}
			restoreTo := func(target string, extra ...string) []string {
				return append([]string{"restore", "start", "B", "--disk", "vda=" + target, "--force", "--wait"}, extra...)
			}
			var attacks [][]string
			for _, f := range storeFiles {
				attacks = append(attacks, restoreTo(data+"/store/"+f))
			}
			attacks = append(attacks,
				restoreTo(data+"/admin.token"),
				restoreTo(data+"/csbs.sock"),
				restoreTo(data+"/nbd.sock"),
				restoreTo(data+"/store/new.img"),
				restoreTo(data+"/new.img"),
				restoreTo("link/store/"+storeFiles[0]),
				restoreTo("link/admin.token"),
				restoreTo("./"+data+"/../"+filepath.Base(data)+"/admin.token"),
				[]string{"restore", "start", "B", "--instant", "--disk", "vda=" + data + "/instant.img", "--force"},
				[]string{"mount", data + "/mnt"},
				[]string{"mount", data + "/store/sub"},
				[]string{"mount", "link/mnt"},
				[]string{"server", "add", "--name", "evil", "--disk", "vda=" + data + "/admin.token"},
				[]string{"server", "add", "--name", "evil", "--disk", "vda=" + data + "/store/" + storeFiles[0]},
				[]string{"server", "add", "--name", "evil", "--disk", "vda=link/admin.token"},
				[]string{"server", "add", "--name", "evil", "--disk", "vda=nbd+unix:///x?socket=" + filepath.Join(wd, data, "nbd.sock")},
			)
			if os.Geteuid() == 0 {
				attacks = append(attacks, []string{"backup", "browse", "B", data + "/store/sub"}, []string{"backup", "browse", "B", "link/browse"})
			} else {
				t.Log("not root: backup browse is refused for needing root before its path is checked; skipping those rows")
			}
			for _, args := range attacks {
				a.fails(nil, "inside the appliance's own data", args...)
			}
			for _, f := range storeFiles {
				if _, err := os.Stat(filepath.Join(wd, data, "store", f)); err != nil {
					t.Fatalf("store file %s: %v", f, err)
				}
			}
			for _, p := range []string{"new.img", "instant.img", "mnt", "store/sub", "store/new.img", "browse"} {
				if _, err := os.Lstat(filepath.Join(wd, data, p)); err == nil {
					t.Fatalf("a refused command created %s/%s", data, p)
				}
			}
			// The store still opens, and the backup restores exactly.
			a.stop()
			a.start()
			a.ok("backup", "show", "B")
			a.ok("restore", "start", "B", "--disk", "vda=restored.img", "--wait")
			if testdisk.SHA256(t, filepath.Join(wd, "restored.img")) != testdisk.SHA256(t, img) {
				t.Fatal("restore after the attacks differs from the disk")
			}
		})
	}
}

// TestProjectTokenHostFiles reproduces the reported attack: a token of a
// fresh project adds /etc/shadow as a disk (to back it up and restore a
// copy wherever it likes) and restores over a host file with --force.
// Both are refused with an error naming the setting; the project may use
// only what the admin granted it (symlinks resolved), and the admin
// keeps its freedom.
func TestProjectTokenHostFiles(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "[access.projects.team-a]\nsource_dirs = [\"{dir}/team-a\"]\ntarget_dirs = [\"{dir}/team-a\"]\nmount_dirs = [\"{dir}/team-a\"]\n")
	team := filepath.Join(a.dir, "team-a")
	if err := os.Mkdir(team, 0o755); err != nil {
		t.Fatal(err)
	}
	img := testdisk.Sparse(t, team, 4<<20, 70000, 0)
	hostFile := filepath.Join(a.dir, "root-owned.img") // stands for any file of the host
	if err := os.WriteFile(hostFile, []byte("precious host data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", filepath.Join(team, "shadow")); err != nil {
		t.Fatal(err)
	}
	a.ok("project", "create", "team-a")
	a.ok("project", "create", "team-b")
	tokA := strings.TrimSpace(a.ok("token", "create", "--project", "team-a", "--name", "ci", "--quiet"))
	tokB := strings.TrimSpace(a.ok("token", "create", "--project", "team-b", "--name", "ci", "--quiet"))
	asA, asB := []string{"CSBS_TOKEN=" + tokA}, []string{"CSBS_TOKEN=" + tokB}

	a.fails(asA, "access.projects.team-a.source_dirs", "server", "add", "--name", "shadow", "--disk", "vda=/etc/shadow")
	a.fails(asA, "resolves to /etc/shadow", "server", "add", "--name", "shadow", "--disk", "vda="+filepath.Join(team, "shadow"))
	a.fails(asB, "none is granted", "server", "add", "--name", "shadow", "--disk", "vda=/etc/shadow")
	a.fails(asB, "access.projects.team-b.source_dirs", "server", "add", "--name", "web", "--disk", "vda="+img)

	// What the admin granted works.
	if out, errOut, code := a.run(asA, "server", "add", "--name", "web", "--disk", "vda="+img); code != 0 {
		t.Fatalf("granted disk: %s%s", out, errOut)
	}
	if out, errOut, code := a.run(asA, "backup", "create", "web", "--full", "--enable-instant-restore", "--name", "b1", "--wait"); code != 0 {
		t.Fatalf("backup: %s%s", out, errOut)
	}
	a.fails(asA, "access.projects.team-a.target_dirs", "restore", "start", "b1", "--disk", "vda="+hostFile, "--force", "--wait")
	a.fails(asA, "access.projects.team-a.target_dirs", "restore", "start", "b1", "--instant", "--disk", "vda="+hostFile, "--force")
	a.fails(asA, "access.projects.team-a.mount_dirs", "mount", filepath.Join(a.dir, "mnt"))
	a.fails(asA, "access.projects.team-a.mount_dirs", "backup", "browse", "b1", filepath.Join(a.dir, "browse"))
	if b, _ := os.ReadFile(hostFile); string(b) != "precious host data" {
		t.Fatal("a refused restore overwrote the host file")
	}
	restored := filepath.Join(team, "restored.img")
	if out, errOut, code := a.run(asA, "restore", "start", "b1", "--disk", "vda="+restored, "--wait"); code != 0 {
		t.Fatalf("restore into the grant: %s%s", out, errOut)
	}
	if testdisk.SHA256(t, restored) != testdisk.SHA256(t, img) {
		t.Fatal("restore differs")
	}
	// The project sees its grants.
	out, errOut, code := a.run(asA, "project", "show", "team-a")
	if code != 0 || !strings.Contains(out, "disk sources:    "+team) || !strings.Contains(out, "NBD TCP hosts:   none") {
		t.Fatalf("project show: %s%s", out, errOut)
	}
	// The admin keeps its freedom: it may add the host file to team-a,
	// whose token may then back it up (the admin's grant).
	a.ok("--project", "team-a", "server", "add", "--name", "host", "--disk", "vda="+hostFile)
	if out, errOut, code := a.run(asA, "backup", "create", "host", "--wait"); code != 0 {
		t.Fatalf("backup of the admin's disk: %s%s", out, errOut)
	}
}
