package source

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"csbs/nbd"
)

// openNBD connects to an NBD export (a qemu-nbd export of a VM's disk,
// for example) with the userspace client; reads keep several requests in
// flight. The socket of an nbd+unix URI is opened with O_PATH first, its
// type and real path checked, and connected through that handle, so the
// guard's decision holds for the socket that is dialed.
func openNBD(ctx context.Context, uri string, guard Guard) (Disk, error) {
	t, err := nbd.ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	if t.Network == "unix" {
		pfd, err := unix.Open(t.Address, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open source %s: socket %s: %w", uri, t.Address, err)
		}
		defer unix.Close(pfd)
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			return nil, fmt.Errorf("open source %s: %w", uri, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return nil, fmt.Errorf("open source %s: %s is %s, not a socket", uri, t.Address, KindOf(st.Mode))
		}
		if guard != nil {
			real, err := FDPath(pfd)
			if err != nil {
				return nil, fmt.Errorf("open source %s: %w", uri, err)
			}
			if err := guard(Location{Path: real}); err != nil {
				return nil, err
			}
		}
		t.Address = fmt.Sprintf("/proc/self/fd/%d", pfd)
	} else if guard != nil {
		if err := guard(Location{Addr: t.Address}); err != nil {
			return nil, err
		}
	}
	c, err := nbd.DialTarget(ctx, t, uri)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	return c, nil
}
