// Package testenv decides what a test does when the machine lacks
// something it needs (root, /dev/fuse, a program): outside CI it skips
// with the reason; in CI, whose .ci/run installs everything, it fails,
// so that no test is silently skipped there.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI (the CI variable is set).
func InCI() bool { return os.Getenv("CI") != "" }

// Missing fails the test in CI and skips it elsewhere, saying what is
// missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI must have it: .ci/run installs it)", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// NeedTools needs every program on the PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, "%s not installed", tool)
		}
	}
}

// NeedFUSE needs root and /dev/fuse (FUSE and loop mounts).
func NeedFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "FUSE and loop mounts need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Missing(t, "no /dev/fuse: %v", err)
	}
}

// NeedRoot needs root; why says what for.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: %s", why)
	}
}

// WaitListening waits until a server listens on the unix socket sock (a
// socket file can exist before its server accepts), failing the test
// after 10 s.
func WaitListening(t testing.TB, sock string) {
	t.Helper()
	for range 1000 {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after 10 s", sock)
}
