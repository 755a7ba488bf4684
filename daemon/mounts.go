package daemon

import (
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/fusefs"
	"csbs/mounts"
)

// volumes opens backup disks for the FUSE tree: the backup counts as in
// use until release, and reads are counted for the metrics.
type volumes struct{ d *Daemon }

var _ mounts.Volumes = volumes{}

func (v volumes) OpenDisk(b catalog.Backup, disk string) (fusefs.Volume, func(), error) {
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
		return countingVolume{Volume: vol, d: v.d}, func() { vol.Close(); release() }, nil
	}
	return nil, nil, catalog.ErrNotFound
}

// countingVolume counts FUSE reads for the metrics.
type countingVolume struct {
	fusefs.Volume
	d *Daemon
}

func (v countingVolume) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.Volume.ReadAt(p, off)
	v.d.metrics.FUSEReads.Inc()
	v.d.metrics.FUSEReadBytes.Add(float64(n))
	return n, err
}
