package access

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// ErrDenied means the caller may not use a host path or NBD host. The
// API answers it with 403.
var ErrDenied = errors.New("host access denied")

// Use is what a path is named for.
type Use int

// The uses of host paths, each with its own grant list.
const (
	Source Use = iota // read as a disk: image file, block device, NBD socket
	Target            // written by a restore
	Mount             // a FUSE mount or a browse (loop) mount
)

func (u Use) String() string {
	switch u {
	case Source:
		return "disk source"
	case Target:
		return "restore target"
	case Mount:
		return "mount path"
	}
	return "path"
}

// key is the config key of the use's grant list.
func (u Use) key() string {
	switch u {
	case Source:
		return "source_dirs"
	case Target:
		return "target_dirs"
	}
	return "mount_dirs"
}

// Caller is who names a path: the admin token (acting in any project) or
// a project token, by project name, since grants are configured by name.
type Caller struct {
	Admin   bool
	Project string
}

// Grant lists host directories per use (a directory grants everything
// below it; an entry may name a single file or device) and NBD hosts
// ("host", "host:port" or "*").
type Grant struct {
	SourceDirs []string `json:"source_dirs"`
	TargetDirs []string `json:"target_dirs"`
	MountDirs  []string `json:"mount_dirs"`
	NBDHosts   []string `json:"nbd_hosts"`
}

func (g Grant) dirs(u Use) []string {
	switch u {
	case Source:
		return g.SourceDirs
	case Target:
		return g.TargetDirs
	}
	return g.MountDirs
}

// Rules are the appliance's host access rules; the daemon builds them
// from its config. The zero Rules let the admin name anything and project
// tokens nothing.
type Rules struct {
	// Protected are the appliance's own files and directories (data dir,
	// sockets): nobody may name them or anything below them.
	Protected []string
	// AllowedSources is sources.allowed_dirs: when not empty, every
	// caller's disk source paths must lie below one of them.
	AllowedSources []string
	// Global is granted to every project token.
	Global Grant
	// Projects are granted to one project each, by name, on top of Global.
	Projects map[string]Grant
}

// For returns what a project's tokens may use: the global grant plus the
// project's own.
func (r *Rules) For(project string) Grant {
	p := r.Projects[project]
	cat := func(a, b []string) []string { return append(append([]string{}, a...), b...) }
	return Grant{
		SourceDirs: cat(r.Global.SourceDirs, p.SourceDirs),
		TargetDirs: cat(r.Global.TargetDirs, p.TargetDirs),
		MountDirs:  cat(r.Global.MountDirs, p.MountDirs),
		NBDHosts:   cat(r.Global.NBDHosts, p.NBDHosts),
	}
}

// CheckPath decides whether c may use a host path for u. named is the
// path as the caller wrote it, real the same path with every symlink
// resolved (Resolve at request time, the kernel's path of the open file
// at open time); both must be absolute. A refusal wraps ErrDenied and
// names the setting that governs it.
func (r *Rules) CheckPath(c Caller, u Use, named, real string) error {
	for _, p := range []string{named, real} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%w: %s %q: not an absolute path", ErrDenied, u, p)
		}
	}
	shown := named
	if filepath.Clean(real) != filepath.Clean(named) {
		shown = fmt.Sprintf("%s (resolves to %s)", named, real)
	}
	for _, p := range r.Protected {
		rp, err := Resolve(p)
		if err != nil {
			return fmt.Errorf("%w: %s %s: cannot resolve the appliance's own path %s: %v", ErrDenied, u, shown, p, err)
		}
		inside := within(p, named) || within(p, real) || within(rp, named) || within(rp, real) || sameOrBelow(rp, real)
		if inside {
			return fmt.Errorf("%w: %s %s is inside the appliance's own data (%s); nobody may name it", ErrDenied, u, shown, p)
		}
	}
	if u == Source && len(r.AllowedSources) > 0 {
		if !withinAny(r.AllowedSources, real) {
			return fmt.Errorf("%w: %s %s is outside sources.allowed_dirs (%s)", ErrDenied, u, shown, strings.Join(r.AllowedSources, ", "))
		}
	}
	if c.Admin {
		return nil
	}
	dirs := r.For(c.Project).dirs(u)
	if withinAny(dirs, real) {
		return nil
	}
	granted := "none is granted"
	if len(dirs) > 0 {
		granted = "granted: " + strings.Join(dirs, ", ")
	}
	return fmt.Errorf("%w: %s %s: a token of project %s may name only paths below access.%s or access.projects.%s.%s in the daemon's config (%s); ask the appliance's admin",
		ErrDenied, u, shown, c.Project, u.key(), c.Project, u.key(), granted)
}

// CheckNBDHost decides whether c may read a disk from the NBD server at
// hostport (an nbd:// URI, named as the caller wrote it): the admin may,
// a project token only when access.nbd_hosts or its project's list names
// the host, the host and port, or "*".
func (r *Rules) CheckNBDHost(c Caller, named, hostport string) error {
	if c.Admin {
		return nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%w: disk source %s: %v", ErrDenied, named, err)
	}
	hosts := r.For(c.Project).NBDHosts
	for _, h := range hosts {
		if h == "*" {
			return nil
		}
		if hh, pp, err := net.SplitHostPort(h); err == nil {
			if strings.EqualFold(hh, host) && pp == port {
				return nil
			}
		} else if strings.EqualFold(strings.Trim(h, "[]"), host) {
			return nil
		}
	}
	granted := "none is granted"
	if len(hosts) > 0 {
		granted = "granted: " + strings.Join(hosts, ", ")
	}
	return fmt.Errorf("%w: disk source %s: a token of project %s may read NBD over TCP only from hosts in access.nbd_hosts or access.projects.%s.nbd_hosts in the daemon's config (%s); ask the appliance's admin",
		ErrDenied, named, c.Project, c.Project, granted)
}

// Resolve returns path with every symlink resolved, as far as it exists:
// the longest existing prefix is resolved and the rest (to be created)
// appended. path must be absolute.
func Resolve(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q is not an absolute path", path)
	}
	path = filepath.Clean(path)
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if _, lerr := os.Lstat(path); lerr == nil {
		// It exists but does not resolve: a dangling symlink, which a
		// create would follow to wherever it points.
		return "", fmt.Errorf("%s is a symlink to a missing file", path)
	}
	parent := filepath.Dir(path)
	if parent == path {
		return "", err
	}
	rp, err := Resolve(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(rp, filepath.Base(path)), nil
}

// within reports whether p is base or below it (both absolute, compared
// as cleaned paths).
func within(base, p string) bool {
	base, p = filepath.Clean(base), filepath.Clean(p)
	if base == "/" {
		return true
	}
	return p == base || strings.HasPrefix(p, base+"/")
}

// withinAny reports whether real lies below one of dirs, each resolved;
// a directory that cannot be resolved grants nothing.
func withinAny(dirs []string, real string) bool {
	for _, d := range dirs {
		if rd, err := Resolve(d); err == nil && within(rd, real) {
			return true
		}
	}
	return false
}

// sameOrBelow reports whether the existing file own is real or one of
// real's existing ancestors, compared by device and inode: a bind mount
// of the data dir elsewhere is the data dir too.
func sameOrBelow(own, real string) bool {
	ofi, err := os.Stat(own)
	if err != nil {
		return false
	}
	for p := filepath.Clean(real); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && os.SameFile(fi, ofi) {
			return true
		}
		if p == "/" || p == "." {
			return false
		}
	}
}
