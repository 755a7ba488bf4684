// Package config reads the appliance's TOML configuration strictly: an
// unknown key is an error naming the key and its line, and every value is
// checked before the daemon starts. With no file, Default gives a working
// appliance with its data under ./var.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"csbs/catalog"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
)

// Config is the whole configuration. Field comments are the reference;
// config.example.toml documents every key and is checked against this
// struct by a test.
type Config struct {
	Region            string    `toml:"region"`
	AvailabilityZones []string  `toml:"availability_zones"`
	DataDir           string    `toml:"data_dir"`
	Store             Store     `toml:"store"`
	API               API       `toml:"api"`
	NBD               NBD       `toml:"nbd"`
	FUSE              FUSE      `toml:"fuse"`
	Scheduler         Scheduler `toml:"scheduler"`
	Jobs              Jobs      `toml:"jobs"`
	Restore           Restore   `toml:"restore"`
	GC                Periodic  `toml:"gc"`
	Scrub             Periodic  `toml:"scrub"`
	Metrics           Metrics   `toml:"metrics"`
	Log               Log       `toml:"log"`
	Sources           Sources   `toml:"sources"`
	Access            Access    `toml:"access"`
}

// Store configures the block store.
type Store struct {
	BlockSize   Size     `toml:"block_size"`  // only used when the store is created
	Compression string   `toml:"compression"` // s2 | zstd | none
	CacheSize   AutoSize `toml:"cache_size"`  // decoded, verified block cache; auto: from the machine's memory (CacheBytes)
	// Workers decode, verify and compress blocks and copy them in
	// restores and hydration; 0: one per CPU the process may use
	// (GOMAXPROCS).
	Workers int `toml:"workers"`
	// InflightMemory is the one budget for block data in flight (NBD
	// buffers, read-ahead, restore and hydration buffers); auto: see
	// InflightBytes.
	InflightMemory AutoSize `toml:"inflight_memory"`
	MinFree        Size     `toml:"min_free"` // free space backups never eat into
	Backend        string   `toml:"backend"`  // where block bytes live: local | s3 (s3.go)
	S3             S3       `toml:"s3"`       // [store.s3], for backend = "s3"
}

// API configures the daemon's API listeners.
type API struct {
	Socket    string `toml:"socket"`     // unix socket; default <data_dir>/csbs.sock
	TCPListen string `toml:"tcp_listen"` // optional host:port, TLS required
	TLSCert   string `toml:"tls_cert"`
	TLSKey    string `toml:"tls_key"`
	Insecure  bool   `toml:"insecure"` // allow TCP without TLS
}

// NBD configures the NBD listeners.
type NBD struct {
	Socket    string `toml:"socket"`     // default <data_dir>/nbd.sock
	TCPListen string `toml:"tcp_listen"` // optional, e.g. 127.0.0.1:10809
	// AllowRemote permits a tcp_listen address other than loopback: NBD
	// has no authentication here beyond the export names' secret part.
	AllowRemote bool `toml:"allow_remote"`
	// AttachCacheSize bounds the copy-on-read cache file of each attached
	// export (blocks read twice are kept decoded in <data_dir>/cache); 0
	// turns it off.
	AttachCacheSize Size `toml:"attach_cache_size"`
}

// FUSE configures the daemon's own mount of all backups.
type FUSE struct {
	Mountpoint string `toml:"mountpoint"` // empty: no daemon-wide mount
}

// Scheduler configures policy execution.
type Scheduler struct {
	MaxConcurrentJobs int      `toml:"max_concurrent_jobs"`
	Window            Duration `toml:"window"` // a run that cannot start within this is skipped
}

// Jobs configures how long the catalog keeps finished jobs (queued and
// running ones always stay). A finished job goes when it is older than
// its age limit (Keep, or KeepFailed for a failed job; age counts from
// its end) and not among the KeepLast newest finished jobs of its kind.
type Jobs struct {
	Keep       Duration `toml:"keep"`        // 0: forever
	KeepFailed Duration `toml:"keep_failed"` // 0: forever
	KeepLast   int      `toml:"keep_last"`
}

func (j Jobs) validate() error {
	for _, d := range []struct {
		key string
		v   Duration
	}{{"jobs.keep", j.Keep}, {"jobs.keep_failed", j.KeepFailed}} {
		if v := time.Duration(d.v); v != 0 && v < time.Hour {
			return bad(d.key, "%s %s: at least 1h (or \"0\" to keep jobs forever)", d.key, v)
		}
	}
	if j.Keep == 0 && j.KeepFailed != 0 {
		return bad("jobs.keep_failed", "jobs.keep_failed %s with jobs.keep = \"0\" (forever) would delete failed jobs before others; set jobs.keep too", time.Duration(j.KeepFailed))
	}
	if j.KeepFailed != 0 && j.KeepFailed < j.Keep {
		return bad("jobs.keep_failed", "jobs.keep_failed %s is shorter than jobs.keep %s: failed jobs explain what went wrong and stay at least as long", time.Duration(j.KeepFailed), time.Duration(j.Keep))
	}
	if j.KeepLast < 0 || j.KeepLast > 1000000 {
		return bad("jobs.keep_last", "jobs.keep_last %d: want 0..1000000", j.KeepLast)
	}
	return nil
}

// Restore configures restores.
type Restore struct {
	DefaultRate Rate `toml:"default_rate"` // hydration rate limit; 0 = unlimited
}

// Periodic is a maintenance job's schedule: daily at a wall-clock time
// ("03:00" in Timezone), or an interval from the daemon's start ("24h"),
// or neither for by hand only. A wall time survives daemon restarts; an
// interval restarts with the daemon.
type Periodic struct {
	Every    Duration `toml:"every"`
	Schedule string   `toml:"schedule"` // daily "HH:MM"
	Timezone string   `toml:"timezone"` // IANA name for Schedule; default UTC
}

func (p Periodic) validate(name string) error {
	if d := time.Duration(p.Every); d != 0 && d < time.Minute {
		return bad(name+".every", "%s.every %s: at least 1m (or empty for never)", name, d)
	}
	if p.Every != 0 && p.Schedule != "" {
		return bad(name+".every", "%s: every and schedule both set; choose one", name)
	}
	if p.Schedule != "" {
		// The policies' rule: maintenance.Schedule.Next reads it with
		// catalog.ParseClock too.
		if _, err := catalog.ParseClock(p.Schedule); err != nil {
			return bad(name+".schedule", "%s.schedule: %q is not a wall time HH:MM (24-hour, 00:00 to 23:59)", name, p.Schedule)
		}
	}
	if p.Timezone != "" {
		if p.Schedule == "" {
			return bad(name+".timezone", "%s.timezone is only used with %s.schedule", name, name)
		}
		if _, err := time.LoadLocation(p.Timezone); err != nil {
			return bad(name+".timezone", "%s.timezone %q: unknown time zone", name, p.Timezone)
		}
	}
	return nil
}

// Metrics configures the Prometheus listener.
type Metrics struct {
	Listen string `toml:"listen"` // empty: off
}

// Log configures logging.
type Log struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // text | json
}

// Sources restricts where server disks may come from.
type Sources struct {
	AllowedDirs []string `toml:"allowed_dirs"` // empty: any path
}

// Access is what project tokens may reach on the host. The admin token
// may name any host path outside the appliance's own data (data dir and
// sockets, which nobody may name); a project token only paths below the
// directories granted here, globally (the Grant fields) or to its project
// by name (Projects), and nbd:// servers listed in nbd_hosts.
type Access struct {
	Grant
	Projects map[string]Grant `toml:"projects"` // by project name: added to the global grant
}

// Grant lists host directories (a directory grants everything below it;
// an entry may also name one file or device) and NBD hosts.
type Grant struct {
	SourceDirs []string `toml:"source_dirs"` // disk sources: image files, block devices, nbd+unix sockets
	TargetDirs []string `toml:"target_dirs"` // restore targets
	MountDirs  []string `toml:"mount_dirs"`  // mount and browse paths
	NBDHosts   []string `toml:"nbd_hosts"`   // nbd:// servers: "host", "host:port" or "*"
}

func (g Grant) validate(key string) error {
	for _, l := range []struct {
		name string
		dirs []string
	}{{"source_dirs", g.SourceDirs}, {"target_dirs", g.TargetDirs}, {"mount_dirs", g.MountDirs}} {
		for _, d := range l.dirs {
			if !filepath.IsAbs(d) {
				return bad(key+"."+l.name, "%s.%s: %q is not an absolute path", key, l.name, d)
			}
		}
	}
	for _, h := range g.NBDHosts {
		if h == "*" {
			continue
		}
		host := h
		if hh, port, err := net.SplitHostPort(h); err == nil {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return bad(key+".nbd_hosts", "%s.nbd_hosts: %q: bad port", key, h)
			}
			host = hh
		}
		if host == "" || strings.ContainsAny(host, "/?#@ ") {
			return bad(key+".nbd_hosts", "%s.nbd_hosts: %q: want \"host\", \"host:port\" or \"*\"", key, h)
		}
	}
	return nil
}

// Default returns the embedded default configuration.
func Default() Config {
	return Config{
		Region:            "local-1",
		AvailabilityZones: []string{"local-1a"},
		DataDir:           "./var",
		Store:             Store{BlockSize: 64 << 10, Compression: "zstd", MinFree: 384 << 20, Backend: BackendLocal, S3: defaultS3()},
		NBD:               NBD{AttachCacheSize: 4 << 30},
		Scheduler:         Scheduler{MaxConcurrentJobs: 2, Window: Duration(time.Hour)},
		Jobs:              Jobs{Keep: Duration(30 * 24 * time.Hour), KeepFailed: Duration(90 * 24 * time.Hour), KeepLast: 100},
		Restore:           Restore{DefaultRate: 200 << 20},
		Log:               Log{Level: "info", Format: "text"},
		Sources:           Sources{AllowedDirs: []string{}},
		Access:            Access{Grant: Grant{SourceDirs: []string{}, TargetDirs: []string{}, MountDirs: []string{}, NBDHosts: []string{}}},
	}
}

// Load reads the file at path over the defaults (path "" means the
// embedded default alone) and returns it with every path absolute:
// relative paths in a file are taken from the file's directory, those of
// the embedded default from the working directory. Every path check of
// the appliance compares absolute paths, so this is the one place where
// paths become absolute.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, c.resolveFromWorkingDir()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := Parse(data, &c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, c.Resolve(filepath.Dir(abs))
}

// LoadDataDir is the embedded default with data_dir set to dir (the
// CLI's --data-dir), every path absolute; a relative dir is taken from
// the working directory.
func LoadDataDir(dir string) (Config, error) {
	c := Default()
	c.DataDir = dir
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, c.resolveFromWorkingDir()
}

func (c *Config) resolveFromWorkingDir() error {
	wd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("config: working directory: %w", err)
	}
	return c.Resolve(wd)
}

// Parse decodes TOML into c strictly, then validates.
func Parse(data []byte, c *Config) error {
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return fmt.Errorf("line %d: unknown key %q", lineOf(data, k), k.String())
	}
	err = c.Validate()
	var ke *KeyError
	if errors.As(err, &ke) {
		if n := lineOf(data, toml.Key(strings.Split(ke.Key, "."))); n > 0 {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	return err
}

// lineOf finds the line that sets key k (best effort, for messages).
func lineOf(data []byte, k toml.Key) int {
	last := k[len(k)-1]
	table := strings.Join(k[:len(k)-1], ".")
	inTable := table == ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	assign := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(last) + `"?\s*=`)
	header := regexp.MustCompile(`^\s*\[+\s*([^\]]+?)\s*\]+`)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := header.FindStringSubmatch(line); m != nil {
			if m[1] == strings.Join(k, ".") {
				return n
			}
			inTable = m[1] == table
			continue
		}
		if inTable && assign.MatchString(line) {
			return n
		}
	}
	return 0
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// KeyError is a bad value: Key is the dotted key that holds it, so that
// Parse can say on which line of the file it is.
type KeyError struct {
	Key string
	Msg string
}

func (e *KeyError) Error() string { return e.Msg }

// bad builds a KeyError for key.
func bad(key, format string, args ...any) error {
	return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every value.
func (c *Config) Validate() error {
	if !nameRE.MatchString(c.Region) {
		return bad("region", "region %q: want 1-64 of [A-Za-z0-9_-]", c.Region)
	}
	if len(c.AvailabilityZones) == 0 {
		return bad("availability_zones", "availability_zones: at least one AZ is needed")
	}
	seen := map[string]bool{}
	for _, az := range c.AvailabilityZones {
		if !nameRE.MatchString(az) {
			return bad("availability_zones", "availability_zones: %q: want 1-64 of [A-Za-z0-9_-]", az)
		}
		if seen[az] {
			return bad("availability_zones", "availability_zones: %q listed twice", az)
		}
		seen[az] = true
	}
	if c.DataDir == "" {
		return bad("data_dir", "data_dir is empty")
	}
	bs := int64(c.Store.BlockSize)
	if bs < 4096 || bs > 4<<20 || bs&(bs-1) != 0 {
		return bad("store.block_size", "store.block_size %d: want a power of two from 4KiB to 4MiB", bs)
	}
	switch c.Store.Compression {
	case "s2", "zstd", "none":
	default:
		return bad("store.compression", "store.compression %q: want s2, zstd or none", c.Store.Compression)
	}
	if c.Store.MinFree < 320<<20 {
		return bad("store.min_free", "store.min_free %s: at least 320MiB (Badger's mapped files need it)", sizeH(c.Store.MinFree))
	}
	if c.Store.CacheSize != Auto && c.Store.CacheSize < 1<<20 {
		return bad("store.cache_size", "store.cache_size %s: at least 1MiB (or \"auto\")", sizeH(Size(c.Store.CacheSize)))
	}
	if mem := memoryBytes(); mem > 0 && int64(c.Store.CacheSize) > mem/2 {
		return bad("store.cache_size", "store.cache_size %s: more than half of this machine's memory (%s); the block cache lives in memory", sizeH(Size(c.Store.CacheSize)), sizeH(Size(mem)))
	}
	if c.Store.Workers < 0 || c.Store.Workers > 4096 {
		return bad("store.workers", "store.workers %d: want 0 (one per CPU) to 4096", c.Store.Workers)
	}
	if c.Store.InflightMemory != Auto && c.Store.InflightMemory < 16<<20 {
		return bad("store.inflight_memory", "store.inflight_memory %s: at least 16MiB (or \"auto\")", sizeH(Size(c.Store.InflightMemory)))
	}
	if n := c.NBD.AttachCacheSize; n != 0 && n < 16<<20 {
		return bad("nbd.attach_cache_size", "nbd.attach_cache_size %s: 0 (off) or at least 16MiB", sizeH(n))
	}
	if err := c.Store.validateBackend(); err != nil {
		return err
	}
	if c.API.TCPListen != "" {
		if _, _, err := net.SplitHostPort(c.API.TCPListen); err != nil {
			return bad("api.tcp_listen", "api.tcp_listen %q: %v", c.API.TCPListen, err)
		}
		if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
			return bad("api.tls_cert", "api.tls_cert and api.tls_key go together")
		}
		if c.API.TLSCert == "" && !c.API.Insecure {
			return bad("api.tcp_listen", "api.tcp_listen needs api.tls_cert and api.tls_key (or api.insecure = true)")
		}
	}
	if c.NBD.TCPListen != "" {
		host, _, err := net.SplitHostPort(c.NBD.TCPListen)
		if err != nil {
			return bad("nbd.tcp_listen", "nbd.tcp_listen %q: %v", c.NBD.TCPListen, err)
		}
		if !isLoopback(host) && !c.NBD.AllowRemote {
			return bad("nbd.tcp_listen", "nbd.tcp_listen %q is not a loopback address: NBD has no TLS here, so anyone on the network who learns an export name can read (and, for an instant restore, write) the disk; set nbd.allow_remote = true to accept that (e.g. on a private storage network)", c.NBD.TCPListen)
		}
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			return bad("metrics.listen", "metrics.listen %q: %v (want host:port, e.g. 127.0.0.1:9464)", c.Metrics.Listen, err)
		}
	}
	if n := c.Scheduler.MaxConcurrentJobs; n < 1 || n > 64 {
		return bad("scheduler.max_concurrent_jobs", "scheduler.max_concurrent_jobs %d: want 1..64", n)
	}
	if w := time.Duration(c.Scheduler.Window); w < time.Minute || w > 24*time.Hour {
		return bad("scheduler.window", "scheduler.window %s: want 1m..24h", w)
	}
	if err := c.Jobs.validate(); err != nil {
		return err
	}
	if c.Restore.DefaultRate < 0 {
		return bad("restore.default_rate", "restore.default_rate must not be negative")
	}
	if err := c.GC.validate("gc"); err != nil {
		return err
	}
	if err := c.Scrub.validate("scrub"); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "log.format %q: want text or json", c.Log.Format)
	}
	for _, d := range c.Sources.AllowedDirs {
		if !filepath.IsAbs(d) {
			return bad("sources.allowed_dirs", "sources.allowed_dirs: %q is not an absolute path", d)
		}
	}
	if err := c.Access.Grant.validate("access"); err != nil {
		return err
	}
	for name, g := range c.Access.Projects {
		if err := catalog.ValidateName("project", name); err != nil {
			return bad("access.projects."+name, "access.projects.%s: %s", name, strings.TrimPrefix(err.Error(), catalog.ErrInvalid.Error()+": "))
		}
		if err := g.validate("access.projects." + name); err != nil {
			return err
		}
	}
	return nil
}

// Resolve makes every path of c absolute, taking relative ones from the
// directory base, and fills the paths derived from data_dir. Load calls
// it; call it yourself only for a Config built in code.
func (c *Config) Resolve(base string) error {
	if !filepath.IsAbs(base) {
		return fmt.Errorf("config: base directory %q is not absolute", base)
	}
	abs := func(p string) string {
		switch {
		case p == "":
			return ""
		case filepath.IsAbs(p):
			return filepath.Clean(p)
		}
		return filepath.Join(base, p)
	}
	if c.DataDir == "" {
		return fmt.Errorf("data_dir is empty")
	}
	c.DataDir = abs(c.DataDir)
	if c.API.Socket == "" {
		c.API.Socket = filepath.Join(c.DataDir, "csbs.sock")
	}
	if c.NBD.Socket == "" {
		c.NBD.Socket = filepath.Join(c.DataDir, "nbd.sock")
	}
	c.API.Socket, c.NBD.Socket = abs(c.API.Socket), abs(c.NBD.Socket)
	c.API.TLSCert, c.API.TLSKey = abs(c.API.TLSCert), abs(c.API.TLSKey)
	c.FUSE.Mountpoint = abs(c.FUSE.Mountpoint)
	c.Store.S3.CredentialsFile = abs(c.Store.S3.CredentialsFile)
	return c.CheckAbsolute()
}

// CheckAbsolute reports the first path of c that is not absolute. The
// daemon refuses such a config: a relative path compared with an
// absolute one matches nothing, so a check would let it through.
func (c *Config) CheckAbsolute() error {
	for _, p := range []struct{ key, path string }{
		{"data_dir", c.DataDir}, {"api.socket", c.API.Socket}, {"nbd.socket", c.NBD.Socket},
		{"api.tls_cert", c.API.TLSCert}, {"api.tls_key", c.API.TLSKey}, {"fuse.mountpoint", c.FUSE.Mountpoint},
	} {
		optional := p.key != "data_dir" && p.key != "api.socket" && p.key != "nbd.socket"
		if p.path == "" && optional {
			continue
		}
		if !filepath.IsAbs(p.path) {
			return fmt.Errorf("config: %s %q is not an absolute path (load configurations with config.Load)", p.key, p.path)
		}
	}
	return nil
}

// StoreDir is where the Badger store lives.
func (c *Config) StoreDir() string { return filepath.Join(c.DataDir, "store") }

// Size is a byte count written as an integer or a string with units
// ("64KiB", "1.5GB").
type Size int64

// UnmarshalText parses a size with units.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	*s = Size(v)
	return err
}

// ParseSize parses "64KiB", "200MB", "1048576".
func ParseSize(text string) (int64, error) {
	t := strings.TrimSpace(text)
	switch {
	case t == "":
		return 0, fmt.Errorf("size %q is empty; %s", text, sizeForms)
	case strings.HasPrefix(t, "-"):
		return 0, fmt.Errorf("size %q is negative; %s", text, sizeForms)
	}
	v, err := humanize.ParseBytes(t)
	if err != nil {
		return 0, fmt.Errorf("size %q: %s", text, sizeForms)
	}
	if v > 1<<62 {
		return 0, fmt.Errorf("size %q is too large", text)
	}
	return int64(v), nil
}

// sizeForms says how a size is written.
const sizeForms = "want a number of bytes with an optional unit, such as 64KiB, 200MiB, 1.5GB or 1048576"

// sizeH prints a size in binary units for messages.
func sizeH(s Size) string {
	if s < 0 {
		return fmt.Sprintf("%d bytes", int64(s))
	}
	return humanize.IBytes(uint64(s))
}

// memoryBytes is this machine's physical memory (0 when unknown).
func memoryBytes() int64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

// AutoSize is a Size that may be "auto" (Auto): the daemon sizes it
// from the machine.
type AutoSize int64

// Auto is the value of an AutoSize written "auto".
const Auto AutoSize = 0

// UnmarshalText parses "auto" or a size with units.
func (s *AutoSize) UnmarshalText(b []byte) error {
	if strings.TrimSpace(string(b)) == "auto" {
		*s = Auto
		return nil
	}
	v, err := ParseSize(string(b))
	if err == nil && v == 0 {
		return fmt.Errorf("size %q: want a size above 0 or \"auto\"", b)
	}
	*s = AutoSize(v)
	return err
}

// CacheBytes is the block cache's size: cache_size, or for "auto" one
// 256th of the machine's memory, from 64 MiB to 1 GiB (96 MiB on a
// 24 GiB machine, 1 GiB from 256 GiB up). Blocks read again and again
// are served from elsewhere too (attached exports' read cache files,
// the kernel's page cache for FUSE and hydrated targets), so the cache
// mostly holds read-ahead and blocks several readers share.
func (s Store) CacheBytes(physMem int64) int64 {
	if s.CacheSize != Auto {
		return int64(s.CacheSize)
	}
	return min(max(physMem/256, 64<<20), 1<<30)
}

// InflightBytes is the budget for data in flight: inflight_memory, or
// for "auto" 8 MiB per worker, at least 64 MiB.
func (s Store) InflightBytes(workers int) int64 {
	if s.InflightMemory != Auto {
		return int64(s.InflightMemory)
	}
	return max(64<<20, int64(workers)*8<<20)
}

// Rate is bytes per second, written like "200MiB/s" ("0" = unlimited).
type Rate int64

// UnmarshalText parses a rate.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := ParseRate(string(b))
	*r = Rate(v)
	return err
}

// ParseRate parses "200MiB/s" or "200MiB" as bytes per second.
func ParseRate(text string) (int64, error) {
	return ParseSize(strings.TrimSuffix(strings.TrimSpace(text), "/s"))
}

// Duration is a time.Duration written like "1h30m", with days allowed
// in front ("30d", "1d12h").
type Duration time.Duration

// UnmarshalText parses a duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// ParseDuration parses a Go duration with optional leading days
// ("30d", "1d12h", "90m"); "" is 0.
func ParseDuration(text string) (time.Duration, error) {
	s := strings.TrimSpace(text)
	if s == "" {
		return 0, nil
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 32)
		if err != nil || n > 100000 {
			return 0, fmt.Errorf("duration %q: want a number of days (at most 100000) before d, as in \"30d\"", text)
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want a number with a unit, such as 90s, 30m, 1h30m, 24h or 30d (%w)", text, err)
	}
	return days + v, nil
}

// MarshalText writes the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
