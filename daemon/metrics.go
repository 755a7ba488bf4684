package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"csbs/catalog"
	"csbs/metrics"
)

var _ metrics.Source = (*Daemon)(nil)

// MetricsSnapshot reads the figures that live in the catalog, the store
// and the NBD server.
func (d *Daemon) MetricsSnapshot(ctx context.Context) metrics.Snapshot {
	s := metrics.Snapshot{Jobs: map[[2]string]int{}, Backups: map[string]int{}}
	// Counters, not a scan: a scrape costs the same with a million backups.
	err := d.cat.View(func(tx *catalog.Txn) error {
		jc, err := tx.JobCounts()
		if err != nil {
			return err
		}
		for k, n := range jc {
			s.Jobs[k] = int(n)
		}
		ps, err := tx.Projects()
		if err != nil {
			return err
		}
		for _, p := range ps {
			st, err := tx.BackupStats(p.ID)
			if err != nil {
				return err
			}
			for status, n := range st.ByStatus {
				s.Backups[status] += int(n)
			}
			s.DamagedBackups += int(st.Damaged)
			s.StoreLogicalBytes += st.LogicalBytes
			s.StoreDataBytes += st.DataBlocks * int64(d.store.BlockSize())
		}
		return nil
	})
	if err != nil {
		d.log.Warn("metrics: read the catalog", "err", err)
	}
	s.StoreDiskBytes, _ = d.store.DiskUsage()
	s.StoreFreeBytes, _ = d.store.FreeBytes()
	cs := d.store.CacheStats()
	s.CacheHits, s.CacheMisses = int64(cs.Hits), int64(cs.Misses)
	for _, n := range d.serving.srv.Connections() {
		s.NBDConnections += n
	}
	ns := d.serving.srv.Stats()
	s.NBDReadBytes, s.NBDWrittenBytes, s.NBDReadRequests = ns.ReadBytes, ns.WrittenBytes, ns.Reads
	s.NBDReadErrors, s.NBDWriteErrors = ns.ReadErrors, ns.WriteErrors
	if d.s3 != nil {
		st := d.s3.Stats()
		s.ObjectStore = &metrics.ObjectStore{
			Requests: st.Requests, Failures: st.Failures, Retries: st.Retries, BytesUp: st.BytesUp, BytesDown: st.BytesDown,
			CacheHits: st.Cache.Hits, CacheMiss: st.Cache.Misses, CacheBytes: st.Cache.Bytes, CacheLimit: st.Cache.Limit,
		}
	}
	return s
}

// observeJob records a finished job in the metrics.
func (d *Daemon) observeJob(j catalog.Job, err error, started time.Time, total int64, b *catalog.Backup) {
	state := catalog.JobSucceeded
	switch {
	case errors.Is(err, context.Canceled):
		state = catalog.JobCanceled
	case err != nil:
		state = catalog.JobFailed
	}
	d.metrics.JobsFinished.WithLabelValues(j.Kind, state).Inc()
	if io := j.StoreIO; io != nil {
		d.metrics.JobStoreRequests.WithLabelValues(j.Kind, "put").Add(float64(io.Puts))
		d.metrics.JobStoreRequests.WithLabelValues(j.Kind, "get").Add(float64(io.Gets))
		d.metrics.JobStoreBytes.WithLabelValues(j.Kind, "put").Add(float64(io.PutBytes))
		d.metrics.JobStoreBytes.WithLabelValues(j.Kind, "get").Add(float64(io.GetBytes))
	}
	if err != nil {
		return
	}
	took := d.clock.Now().Sub(started).Seconds()
	switch j.Kind {
	case catalog.JobBackup:
		if b == nil {
			return
		}
		var read, stored int64
		for _, disk := range b.Disks {
			read += disk.Blocks * int64(d.store.BlockSize())
			stored += disk.NewBytes
		}
		d.metrics.BackupReadBytes.Add(float64(read))
		d.metrics.BackupStoredBytes.Add(float64(stored))
		d.metrics.BackupDuration.WithLabelValues(b.Trigger).Observe(took)
	case catalog.JobRestore:
		d.metrics.RestoreBytes.Add(float64(total))
		d.metrics.RestoreDuration.Observe(took)
	}
}

// listenMetrics opens the Prometheus listener when configured.
func (d *Daemon) listenMetrics() (net.Listener, error) {
	addr := d.cfg.Metrics.Listen
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	return l, nil
}

// metricsServer serves /metrics (and nothing else).
func (d *Daemon) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}
