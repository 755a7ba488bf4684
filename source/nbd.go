package source

import (
	"context"
	"fmt"

	"csbs/nbd"
)

// openNBD connects to an NBD export (a qemu-nbd export of a VM's disk,
// for example) with the userspace client; reads keep several requests in
// flight.
func openNBD(ctx context.Context, uri string) (Disk, error) {
	c, err := nbd.Dial(ctx, uri)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	return c, nil
}
