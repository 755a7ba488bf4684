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
		{"zone without schedule", "[scrub]\ntimezone = \"UTC\"\n", "scrub.timezone is only used with scrub.schedule"},
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
	if c.Store.BlockSize != 128<<10 || c.Store.CacheSize != 1<<30 || c.Restore.DefaultRate != 50<<20 || time.Duration(c.Scheduler.Window) != 2*time.Hour {
		t.Fatalf("parsed %+v", c)
	}
}

func TestLoadDefaultsAndPaths(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Socket != "var/csbs.sock" || c.StoreDir() != "var/store" {
		t.Fatalf("default paths: %s %s", c.API.Socket, c.StoreDir())
	}
	if _, err := Load("/no/such/file.toml"); err == nil || !strings.Contains(err.Error(), "/no/such/file.toml") {
		t.Fatalf("missing file: %v", err)
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
