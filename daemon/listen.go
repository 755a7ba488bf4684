package daemon

import (
	"net"
	"syscall"
)

// listenUnixPrivate listens on a unix socket created with mode 0600: the
// umask is narrowed around bind so that the socket never exists with
// wider permissions. (The umask is process-wide; the daemon binds its
// sockets at start-up before other goroutines create files.)
func listenUnixPrivate(path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	defer syscall.Umask(old)
	return net.Listen("unix", path)
}
