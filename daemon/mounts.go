package daemon

import (
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/fusefs"
	"csbs/mounts"
)

// disks opens backup disks for the FUSE tree: the backup counts as in
// use until release, and reads are counted for the metrics.
type disks struct{ d *Daemon }

var _ mounts.Disks = disks{}

func (v disks) OpenDisk(b catalog.Backup, disk string) (fusefs.Image, func(), error) {
	for _, bd := range b.Disks {
		if bd.Name != disk {
			continue
		}
		id, err := blockstore.ParseMapID(bd.MapID)
		if err != nil {
			return nil, nil, err
		}
		release := v.d.engine.Acquire(b.ID)
		vol, err := v.d.store.OpenVolume(id)
		if err != nil {
			release()
			return nil, nil, err
		}
		return countingImage{Image: vol, d: v.d}, func() { vol.Close(); release() }, nil
	}
	return nil, nil, catalog.ErrNotFound
}

// countingImage counts FUSE reads for the metrics.
type countingImage struct {
	fusefs.Image
	d *Daemon
}

func (v countingImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.Image.ReadAt(p, off)
	v.d.metrics.FUSEReads.Inc()
	v.d.metrics.FUSEReadBytes.Add(float64(n))
	return n, err
}
