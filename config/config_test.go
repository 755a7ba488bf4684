package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestExampleParsesToDefaults(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := Parse(data, &c); err != nil {
		t.Fatalf("example config: %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("example config differs from the embedded default:\n%+v\n%+v", c, Default())
	}
}

// Every key of Config is documented in config.example.toml.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			key := f.Tag.Get("toml")
			if f.Anonymous {
				walk(prefix, f.Type) // promoted keys, as TOML decodes them
				continue
			}
			if f.Type.Kind() == reflect.Map {
				// A table per map key, shown as a commented example.
				if !strings.Contains(text, "# ["+prefix+key+".") {
					t.Errorf("table [%s%s.NAME] has no example in config.example.toml", prefix, key)
				}
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				if !strings.Contains(text, "\n["+prefix+key+"]\n") {
					t.Errorf("table [%s%s] not in config.example.toml", prefix, key)
				}
				walk(prefix+key+".", f.Type)
				continue
			}
			if !regexp.MustCompile(`(?m)^` + key + ` = `).MatchString(text) {
				t.Errorf("key %s%s not in config.example.toml", prefix, key)
			}
		}
	}
	walk("", reflect.TypeOf(Config{}))
}

func TestStrictErrors(t *testing.T) {
	cases := []struct {
		name, toml, want string
	}{
		{"unknown top key", "region = \"r\"\nregoin = \"x\"\n", `line 2: unknown key "regoin"`},
		{"unknown table key", "[store]\nblock_size = 4096\ncompresion = \"s2\"\n", `line 3: unknown key "store.compresion"`},
		{"unknown table", "[stroe]\nblock_size = 4096\n", `unknown key "stroe`},
		{"syntax", "region = \n", "line 1"},
		{"wrong type", "availability_zones = \"a\"\n", "availability_zones"},
		{"bad block size", "[store]\nblock_size = 5000\n", "store.block_size 5000"},
		{"block size units", "[store]\nblock_size = \"3KiB\"\n", "store.block_size 3072"},
		{"bad compression", "[store]\ncompression = \"lz4\"\n", `store.compression "lz4"`},
		{"bad size", "[store]\ncache_size = \"lots\"\n", `size "lots"`},
		{"zero cache", "[store]\ncache_size = \"0\"\n", `want a size above 0 or "auto"`},
		{"tiny cache", "[store]\ncache_size = \"100KiB\"\n", "store.cache_size 100 KiB: at least 1MiB"},
		{"negative workers", "[store]\nworkers = -1\n", "store.workers -1"},
		{"tiny inflight", "[store]\ninflight_memory = \"1MiB\"\n", "store.inflight_memory 1.0 MiB: at least 16MiB"},
		{"tiny attach cache", "[nbd]\nattach_cache_size = \"1MiB\"\n", "nbd.attach_cache_size 1.0 MiB"},
		{"no AZ", "availability_zones = []\n", "at least one AZ"},
		{"dup AZ", "availability_zones = [\"a\", \"a\"]\n", `"a" listed twice`},
		{"bad region", "region = \"a/b\"\n", `region "a/b"`},
		{"tcp without tls", "[api]\ntcp_listen = \"127.0.0.1:9000\"\n", "needs api.tls_cert"},
		{"remote nbd", "[nbd]\ntcp_listen = \"0.0.0.0:10809\"\n", "not a loopback address"},
		{"remote nbd by name", "[nbd]\ntcp_listen = \"backup.example:10809\"\n", "nbd.allow_remote = true"},
		{"bad metrics listen", "[metrics]\nlisten = \"9464\"\n", "metrics.listen \"9464\""},
		{"bad window", "[scheduler]\nwindow = \"10s\"\n", "scheduler.window 10s"},
		{"bad duration", "[scheduler]\nwindow = \"soon\"\n", `duration "soon"`},
		{"bad jobs", "[scheduler]\nmax_concurrent_jobs = 0\n", "max_concurrent_jobs 0"},
		{"bad level", "[log]\nlevel = \"loud\"\n", `log.level "loud"`},
		{"relative allowed dir", "[sources]\nallowed_dirs = [\"images\"]\n", "not an absolute path"},
		{"gc every too short", "[gc]\nevery = \"10s\"\n", "gc.every 10s: at least 1m"},
		{"gc schedule not a time", "[gc]\nschedule = \"3am\"\n", `gc.schedule: "3am" is not a wall time HH:MM`},
		{"gc schedule out of range", "[gc]\nschedule = \"24:30\"\n", `gc.schedule: "24:30"`},
		{"gc both", "[gc]\nschedule = \"03:00\"\nevery = \"24h\"\n", "gc: every and schedule both set"},
		{"scrub bad zone", "[scrub]\nschedule = \"03:00\"\ntimezone = \"Mars/Olympus\"\n", `scrub.timezone "Mars/Olympus": unknown time zone`},
		{"jobs keep too short", "[jobs]\nkeep = \"10m\"\n", "jobs.keep 10m0s: at least 1h"},
		{"jobs keep bad days", "[jobs]\nkeep = \"xd\"\n", `duration "xd"`},
		{"jobs failed shorter", "[jobs]\nkeep = \"30d\"\nkeep_failed = \"7d\"\n", "jobs.keep_failed 168h0m0s is shorter than jobs.keep 720h0m0s"},
		{"jobs failed without keep", "[jobs]\nkeep = \"0\"\nkeep_failed = \"7d\"\n", "set jobs.keep too"},
		{"jobs keep_last negative", "[jobs]\nkeep_last = -1\n", "jobs.keep_last -1"},
		{"zone without schedule", "[scrub]\ntimezone = \"UTC\"\n", "scrub.timezone is only used with scrub.schedule"},
		// Sizes say how a size is written, never strconv's words.
		{"negative size", "[store]\ncache_size = \"-1MiB\"\n", `line 2: size "-1MiB" is negative; want a number of bytes with an optional unit`},
		{"garbled size", "[store]\ncache_size = \"12 parsecs\"\n", `line 2: size "12 parsecs": want a number of bytes with an optional unit, such as 64KiB`},
		{"empty size", "[store]\nmin_free = \"\"\n", `line 2: size "" is empty`},
		{"negative integer size", "[store]\ncache_size = -5\n", `line 2: size "-5" is negative`},
		{"absurd cache", "[store]\ncache_size = \"1PiB\"\n", "store.cache_size 1.0 PiB: more than half of this machine's memory"},
		{"small reserve", "[store]\nmin_free = \"1MiB\"\n", "store.min_free 1.0 MiB: at least 320MiB"},
		{"garbled duration", "[gc]\nevery = \"daily\"\n", `duration "daily": want a number with a unit, such as 90s`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			err := Parse([]byte(tc.toml), &c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestValidationErrorsHaveLines: a value that parses but is refused by
// the checks is reported on its line, like a syntax error or an unknown
// key, also inside a per-project table and for a key in an array table.
func TestValidationErrorsHaveLines(t *testing.T) {
	cases := []struct{ name, toml, want string }{
		{"top level", "# comment\n\nregion = \"a b\"\n", "line 3: region \"a b\""},
		{"in a table", "region = \"r\"\n\n[store]\nblock_size = \"4KiB\"\ncompression = \"lz4\"\n", "line 5: store.compression \"lz4\""},
		{"periodic", "[scrub]\n\nschedule = \"25:00\"\n", "line 3: scrub.schedule"},
		{"size", "[store]\ncache_size = \"512KiB\"\n", "line 2: store.cache_size 512 KiB: at least 1MiB"},
		{"project grant", "[access.projects.team-a]\nsource_dirs = [\"/srv\"]\ntarget_dirs = [\"rel\"]\n", "line 3: access.projects.team-a.target_dirs: \"rel\" is not an absolute path"},
		{"listen", "[log]\nlevel = \"info\"\n[metrics]\nlisten = \"9464\"\n", "line 4: metrics.listen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			err := Parse([]byte(tc.toml), &c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNBDListenAddresses(t *testing.T) {
	for _, tc := range []struct {
		toml string
		ok   bool
	}{
		{"[nbd]\ntcp_listen = \"127.0.0.1:10809\"\n", true},
		{"[nbd]\ntcp_listen = \"[::1]:10809\"\n", true},
		{"[nbd]\ntcp_listen = \"localhost:10809\"\n", true},
		{"[nbd]\ntcp_listen = \":10809\"\n", false},
		{"[nbd]\ntcp_listen = \"10.0.0.5:10809\"\n", false},
		{"[nbd]\ntcp_listen = \"10.0.0.5:10809\"\nallow_remote = true\n", true},
	} {
		c := Default()
		if err := Parse([]byte(tc.toml), &c); (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.toml, err, tc.ok)
		}
	}
}

func TestValuesWithUnits(t *testing.T) {
	c := Default()
	err := Parse([]byte("[store]\nblock_size = 131072\ncache_size = \"1GiB\"\n[restore]\ndefault_rate = \"50MiB/s\"\n[scheduler]\nwindow = \"2h\"\n"), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.BlockSize != 128<<10 || c.Store.CacheSize != AutoSize(1<<30) || c.Restore.DefaultRate != 50<<20 || time.Duration(c.Scheduler.Window) != 2*time.Hour {
		t.Fatalf("parsed %+v", c)
	}
}

func TestLoadDefaultsAndPaths(t *testing.T) {
	if _, err := Load("/no/such/file.toml"); err == nil || !strings.Contains(err.Error(), "/no/such/file.toml") {
		t.Fatalf("missing file: %v", err)
	}
}

// TestLoadMakesPathsAbsolute: whatever way a config arrives (the embedded
// default in a working directory as make run uses it, --data-dir with a
// relative dir, a relative --config path with a relative data_dir or
// relative sockets), every path the daemon and its checks see is
// absolute and where the documentation says.
func TestLoadMakesPathsAbsolute(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.MkdirAll("etc", 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/plain.toml", "data_dir = \"data\"\n")
	write("etc/socks.toml", "data_dir = \"../d2\"\n[api]\nsocket = \"run/api.sock\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntcp_listen = \"127.0.0.1:1\"\n[nbd]\nsocket = \"/run/n.sock\"\n[fuse]\nmountpoint = \"mnt\"\n")
	write("etc/cert.toml", "[api]\ntls_cert = \"c.pem\"\n")
	cases := []struct {
		name                         string
		load                         func() (Config, error)
		data, api, nbd, cert, fuseMP string
	}{
		{"embedded default", func() (Config, error) { return Load("") }, dir + "/var", dir + "/var/csbs.sock", dir + "/var/nbd.sock", "", ""},
		{"--data-dir relative", func() (Config, error) { return LoadDataDir("var2") }, dir + "/var2", dir + "/var2/csbs.sock", dir + "/var2/nbd.sock", "", ""},
		{"--data-dir ./x/../y", func() (Config, error) { return LoadDataDir("./x/../y") }, dir + "/y", dir + "/y/csbs.sock", dir + "/y/nbd.sock", "", ""},
		{"relative config", func() (Config, error) { return Load("etc/plain.toml") }, dir + "/etc/data", dir + "/etc/data/csbs.sock", dir + "/etc/data/nbd.sock", "", ""},
		{"a cert alone", func() (Config, error) { return Load("etc/cert.toml") }, dir + "/etc/var", dir + "/etc/var/csbs.sock", dir + "/etc/var/nbd.sock", dir + "/etc/c.pem", ""},
		{"relative sockets and files", func() (Config, error) { return Load("etc/socks.toml") }, dir + "/d2", dir + "/etc/run/api.sock", "/run/n.sock", dir + "/etc/c.pem", dir + "/etc/mnt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.load()
			if err != nil {
				t.Fatal(err)
			}
			got := []string{c.DataDir, c.API.Socket, c.NBD.Socket, c.API.TLSCert, c.FUSE.Mountpoint, c.StoreDir()}
			want := []string{tc.data, tc.api, tc.nbd, tc.cert, tc.fuseMP, tc.data + "/store"}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("paths %q, want %q", got, want)
			}
			if err := c.CheckAbsolute(); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A Config built in code with a relative path is refused, not used.
	c := Default()
	if err := c.CheckAbsolute(); err == nil || !strings.Contains(err.Error(), `data_dir "./var" is not an absolute path`) {
		t.Fatalf("relative default not refused: %v", err)
	}
}

func TestAccessConfig(t *testing.T) {
	c := Default()
	err := Parse([]byte(`[access]
source_dirs = ["/srv/shared"]
nbd_hosts = ["10.0.0.5", "nbd.example:10809", "[::1]:10809", "*"]
[access.projects.team-a]
source_dirs = ["/srv/team-a"]
mount_dirs = ["/mnt/team-a"]
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	want := Access{
		Grant:    Grant{SourceDirs: []string{"/srv/shared"}, TargetDirs: []string{}, MountDirs: []string{}, NBDHosts: []string{"10.0.0.5", "nbd.example:10809", "[::1]:10809", "*"}},
		Projects: map[string]Grant{"team-a": {SourceDirs: []string{"/srv/team-a"}, MountDirs: []string{"/mnt/team-a"}}},
	}
	if !reflect.DeepEqual(c.Access, want) {
		t.Fatalf("access %+v, want %+v", c.Access, want)
	}
	for _, tc := range []struct{ name, toml, want string }{
		{"relative global", "[access]\ntarget_dirs = [\"restores\"]\n", `access.target_dirs: "restores" is not an absolute path`},
		{"relative project", "[access.projects.p1]\nmount_dirs = [\"mnt\"]\n", `access.projects.p1.mount_dirs: "mnt" is not an absolute path`},
		{"bad project name", "[access.projects.\"a/b\"]\nmount_dirs = []\n", `access.projects.a/b: project name "a/b"`},
		{"unknown project key", "[access.projects.p1]\nsource_dir = []\n", `unknown key "access.projects.p1.source_dir"`},
		{"bad nbd host", "[access]\nnbd_hosts = [\"nbd://x\"]\n", `access.nbd_hosts: "nbd://x"`},
		{"bad nbd port", "[access]\nnbd_hosts = [\"x:99999\"]\n", `access.nbd_hosts: "x:99999": bad port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if err := Parse([]byte(tc.toml), &c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"90m", 90 * time.Minute, false},
		{"30d", 30 * 24 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"d", 0, true},
		{"xd", 0, true},
		{"-1d", 0, true},
		{"1d12", 0, true},
		{"200000d", 0, true},
	} {
		got, err := ParseDuration(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestS3Backend(t *testing.T) {
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"local by default", "", ""},
		{"s3", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://127.0.0.1:7480\"\nbucket = \"csbs\"\n", ""},
		{"unknown backend", "[store]\nbackend = \"nfs\"\n", `store.backend "nfs": want "local" or "s3"`},
		{"s3 without endpoint", "[store]\nbackend = \"s3\"\n[store.s3]\nbucket = \"csbs\"\n", "store.s3.endpoint \"\""},
		{"endpoint with a path", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h/csbs\"\nbucket = \"csbs\"\n", "store.s3.endpoint"},
		{"bad bucket", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h\"\nbucket = \"My_Bucket\"\n", `store.s3.bucket "My_Bucket"`},
		{"pack too small", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h\"\nbucket = \"csbs\"\npack_size = \"1MiB\"\n", "store.s3.pack_size 1048576: want 4MiB to 128MiB"},
		{"pack too large", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h\"\nbucket = \"csbs\"\npack_size = \"256MiB\"\n", "store.s3.pack_size"},
		{"cache below two packs", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h\"\nbucket = \"csbs\"\ncache_size = \"16MiB\"\n", "store.s3.cache_size 16777216: want at least twice"},
		{"prefix with leading slash", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://h\"\nbucket = \"csbs\"\nprefix = \"/a\"\n", "store.s3.prefix"},
		{"unknown s3 key", "[store.s3]\nsecret = \"x\"\n", `unknown key "store.s3.secret"`},
		{"keys in the endpoint", "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://AKID:secret@h\"\nbucket = \"csbs\"\n", "keys go in store.s3.credentials_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			err := Parse([]byte(tc.toml), &c)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestS3CredentialsFileRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/csbs.toml"
	if err := os.WriteFile(path, []byte("[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://127.0.0.1:7480\"\nbucket = \"csbs\"\ncredentials_file = \"s3.credentials\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.S3.CredentialsFile != dir+"/s3.credentials" {
		t.Fatalf("credentials file %q, want it next to the config", c.Store.S3.CredentialsFile)
	}
}

// The automatic sizes, from the machine: a table of machines.
func TestAutoSizes(t *testing.T) {
	for _, tc := range []struct {
		name            string
		store           Store
		mem             int64
		workers         int
		cache, inflight int64
	}{
		{"small VM", Store{}, 2 << 30, 2, 64 << 20, 64 << 20},
		{"this bench VM", Store{}, 24 << 30, 2, 96 << 20, 64 << 20},
		{"64-core appliance", Store{}, 256 << 30, 64, 1 << 30, 512 << 20},
		{"huge", Store{}, 2 << 40, 128, 1 << 30, 1 << 30},
		{"explicit", Store{CacheSize: 300 << 20, InflightMemory: 32 << 20}, 256 << 30, 64, 300 << 20, 32 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.store.CacheBytes(tc.mem); got != tc.cache {
				t.Errorf("cache %d, want %d", got, tc.cache)
			}
			if got := tc.store.InflightBytes(tc.workers); got != tc.inflight {
				t.Errorf("inflight %d, want %d", got, tc.inflight)
			}
		})
	}
}
