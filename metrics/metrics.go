// Package metrics exposes the appliance's Prometheus metrics. Event
// counters (bytes backed up, job durations, scheduler lag) are updated by
// the daemon as things happen; figures that already live elsewhere (job
// counts, store size, cache and NBD counters) are read at scrape time from
// a Source, so that they can never drift from the truth.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is what a Source reports at scrape time.
type Snapshot struct {
	Jobs map[[2]string]int // (kind, state) -> count

	StoreLogicalBytes int64 // sum of the sizes of all backed-up disks
	StoreDataBytes    int64 // the non-zero blocks they reference
	StoreDiskBytes    int64 // the store's files on disk
	StoreFreeBytes    int64 // free space on the store's file system

	CacheHits, CacheMisses int64

	NBDConnections                  int
	NBDReadBytes, NBDWrittenBytes   int64
	NBDReadRequests, NBDWriteErrors int64
	NBDReadErrors                   int64

	Backups        map[string]int // status -> count
	DamagedBackups int

	// ObjectStore is set for the s3 backend.
	ObjectStore *ObjectStore
}

// ObjectStore are the object-store backend's figures since start.
type ObjectStore struct {
	Requests   map[string]int64 // by operation (PUT, GET, HEAD, DELETE, LIST), every attempt
	Failures   map[string]int64 // attempts that failed, by operation
	Retries    int64
	BytesUp    int64
	BytesDown  int64
	CacheHits  int64 // pack reads served by the local cache
	CacheMiss  int64
	CacheBytes int64
	CacheLimit int64
}

// Source produces a Snapshot; the daemon implements it.
type Source interface {
	MetricsSnapshot(ctx context.Context) Snapshot
}

// Metrics holds the registry and the event metrics.
type Metrics struct {
	reg *prometheus.Registry

	BackupReadBytes   prometheus.Counter
	BackupStoredBytes prometheus.Counter
	BackupDuration    *prometheus.HistogramVec // by trigger
	RestoreBytes      prometheus.Counter
	RestoreDuration   prometheus.Histogram
	HydrationBytes    prometheus.Counter
	JobsFinished      *prometheus.CounterVec // by kind, state
	FUSEReads         prometheus.Counter
	FUSEReadBytes     prometheus.Counter
	GCFreedBytes      prometheus.Counter
	GCLastSuccess     prometheus.Gauge
	ScrubDamaged      prometheus.Gauge
	ScrubLastSuccess  prometheus.Gauge
	SchedulerLag      prometheus.Histogram
	// JobStoreRequests and JobStoreBytes count the pack store requests of
	// finished jobs by job kind and operation (put, get).
	JobStoreRequests *prometheus.CounterVec
	JobStoreBytes    *prometheus.CounterVec
}

// New builds the metrics; src is read at every scrape.
func New(src Source, version string) *Metrics {
	reg := prometheus.NewRegistry()
	sizeBuckets := prometheus.ExponentialBuckets(1, 4, 10) // 1 s .. ~3 days
	m := &Metrics{
		reg:               reg,
		BackupReadBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_backup_read_bytes_total", Help: "Bytes of disk read by backups (holes excluded)."}),
		BackupStoredBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_backup_stored_bytes_total", Help: "Bytes that backups added to the store (new blocks, compressed)."}),
		BackupDuration:    prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "csbs_backup_duration_seconds", Help: "Duration of successful backups.", Buckets: sizeBuckets}, []string{"trigger"}),
		RestoreBytes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_restore_bytes_total", Help: "Bytes written by normal restores."}),
		RestoreDuration:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "csbs_restore_duration_seconds", Help: "Duration of successful normal restores.", Buckets: sizeBuckets}),
		HydrationBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_hydration_bytes_total", Help: "Bytes copied to targets by instant-restore hydration."}),
		JobsFinished:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "csbs_jobs_finished_total", Help: "Jobs finished since the daemon started, by kind and final state."}, []string{"kind", "state"}),
		FUSEReads:         prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_fuse_reads_total", Help: "Read requests served by FUSE mounts."}),
		FUSEReadBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_fuse_read_bytes_total", Help: "Bytes served by FUSE mounts."}),
		GCFreedBytes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "csbs_gc_freed_bytes_total", Help: "Stored bytes freed by garbage collection."}),
		GCLastSuccess:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "csbs_gc_last_success_timestamp_seconds", Help: "When garbage collection last succeeded (0: not since start)."}),
		ScrubDamaged:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "csbs_scrub_damaged_blocks", Help: "Damaged blocks found by the last scrub."}),
		ScrubLastSuccess:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "csbs_scrub_last_success_timestamp_seconds", Help: "When a scrub last completed (0: not since start)."}),
		SchedulerLag:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "csbs_scheduler_lag_seconds", Help: "Delay between a scheduled run's time and its backup's start.", Buckets: prometheus.ExponentialBuckets(0.1, 4, 10)}),
	}
	m.JobStoreRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "csbs_job_store_requests_total", Help: "Pack store requests (object PUTs and GETs for the s3 backend, retries included) made by finished jobs, by job kind and operation."}, []string{"kind", "op"})
	m.JobStoreBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "csbs_job_store_bytes_total", Help: "Bytes moved by the pack store requests of finished jobs, by job kind and operation."}, []string{"kind", "op"})
	reg.MustRegister(m.JobStoreRequests, m.JobStoreBytes)
	reg.MustRegister(m.BackupReadBytes, m.BackupStoredBytes, m.BackupDuration, m.RestoreBytes, m.RestoreDuration,
		m.HydrationBytes, m.JobsFinished, m.FUSEReads, m.FUSEReadBytes, m.GCFreedBytes, m.GCLastSuccess,
		m.ScrubDamaged, m.ScrubLastSuccess, m.SchedulerLag)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "csbs_build_info", Help: "Always 1; the version is a label.", ConstLabels: prometheus.Labels{"version": version}}, func() float64 { return 1 }))
	reg.MustRegister(&snapshotCollector{src: src})
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Timeout: 30 * time.Second})
}

var (
	descJobs           = prometheus.NewDesc("csbs_jobs", "Jobs in the catalog by kind and state.", []string{"kind", "state"}, nil)
	descBackups        = prometheus.NewDesc("csbs_backups", "Backups by status.", []string{"status"}, nil)
	descDamaged        = prometheus.NewDesc("csbs_backups_damaged", "Backups that use a block found damaged by scrub.", nil, nil)
	descLogical        = prometheus.NewDesc("csbs_store_logical_bytes", "Sum of the sizes of all backed-up disks.", nil, nil)
	descData           = prometheus.NewDesc("csbs_store_data_bytes", "Bytes of non-zero blocks referenced by all backups.", nil, nil)
	descDisk           = prometheus.NewDesc("csbs_store_disk_bytes", "Bytes the store's files occupy on disk (allocated).", nil, nil)
	descFree           = prometheus.NewDesc("csbs_store_free_bytes", "Free space on the store's file system.", nil, nil)
	descDedupe         = prometheus.NewDesc("csbs_store_dedupe_ratio", "Logical bytes of all backups per byte on disk (dedupe, zero blocks and compression together).", nil, nil)
	descCacheHits      = prometheus.NewDesc("csbs_block_cache_hits_total", "Block cache hits.", nil, nil)
	descCacheMisses    = prometheus.NewDesc("csbs_block_cache_misses_total", "Block cache misses.", nil, nil)
	descCacheRatio     = prometheus.NewDesc("csbs_block_cache_hit_ratio", "Block cache hits per lookup since start.", nil, nil)
	descNBDConns       = prometheus.NewDesc("csbs_nbd_connections", "Open NBD connections.", nil, nil)
	descNBDRead        = prometheus.NewDesc("csbs_nbd_read_bytes_total", "Bytes read by NBD clients.", nil, nil)
	descNBDWritten     = prometheus.NewDesc("csbs_nbd_written_bytes_total", "Bytes written by NBD clients (instant restores).", nil, nil)
	descNBDReadReqs    = prometheus.NewDesc("csbs_nbd_read_requests_total", "NBD read requests.", nil, nil)
	descNBDErrs        = prometheus.NewDesc("csbs_nbd_errors_total", "NBD requests answered with an error, by operation.", []string{"op"}, nil)
	descObjRequests    = prometheus.NewDesc("csbs_object_store_requests_total", "Requests to the object store (every attempt), by operation.", []string{"op"}, nil)
	descObjFailures    = prometheus.NewDesc("csbs_object_store_failures_total", "Object store request attempts that failed, by operation.", []string{"op"}, nil)
	descObjRetries     = prometheus.NewDesc("csbs_object_store_retries_total", "Object store requests retried after a transient failure.", nil, nil)
	descObjBytes       = prometheus.NewDesc("csbs_object_store_bytes_total", "Bytes sent to (up) and received from (down) the object store.", []string{"direction"}, nil)
	descPackCacheHits  = prometheus.NewDesc("csbs_pack_cache_hits_total", "Pack reads served by the local cache of the object store.", nil, nil)
	descPackCacheMiss  = prometheus.NewDesc("csbs_pack_cache_misses_total", "Pack reads that needed the object store.", nil, nil)
	descPackCacheBytes = prometheus.NewDesc("csbs_pack_cache_bytes", "Bytes in the local pack cache.", nil, nil)
	descPackCacheLimit = prometheus.NewDesc("csbs_pack_cache_limit_bytes", "Bound of the local pack cache (store.s3.cache_size).", nil, nil)
	allSnapshotMetrics = []*prometheus.Desc{descJobs, descBackups, descDamaged, descLogical, descData, descDisk, descFree, descDedupe, descCacheHits, descCacheMisses, descCacheRatio, descNBDConns, descNBDRead, descNBDWritten, descNBDReadReqs, descNBDErrs,
		descObjRequests, descObjFailures, descObjRetries, descObjBytes, descPackCacheHits, descPackCacheMiss, descPackCacheBytes, descPackCacheLimit}
)

type snapshotCollector struct{ src Source }

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allSnapshotMetrics {
		ch <- d
	}
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := c.src.MetricsSnapshot(ctx)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for k, n := range s.Jobs {
		gauge(descJobs, float64(n), k[0], k[1])
	}
	for st, n := range s.Backups {
		gauge(descBackups, float64(n), st)
	}
	gauge(descDamaged, float64(s.DamagedBackups))
	gauge(descLogical, float64(s.StoreLogicalBytes))
	gauge(descData, float64(s.StoreDataBytes))
	gauge(descDisk, float64(s.StoreDiskBytes))
	gauge(descFree, float64(s.StoreFreeBytes))
	if s.StoreDiskBytes > 0 {
		gauge(descDedupe, float64(s.StoreLogicalBytes)/float64(s.StoreDiskBytes))
	}
	counter(descCacheHits, float64(s.CacheHits))
	counter(descCacheMisses, float64(s.CacheMisses))
	if n := s.CacheHits + s.CacheMisses; n > 0 {
		gauge(descCacheRatio, float64(s.CacheHits)/float64(n))
	}
	gauge(descNBDConns, float64(s.NBDConnections))
	counter(descNBDRead, float64(s.NBDReadBytes))
	counter(descNBDWritten, float64(s.NBDWrittenBytes))
	counter(descNBDReadReqs, float64(s.NBDReadRequests))
	counter(descNBDErrs, float64(s.NBDReadErrors), "read")
	counter(descNBDErrs, float64(s.NBDWriteErrors), "write")
	if o := s.ObjectStore; o != nil {
		for op, n := range o.Requests {
			counter(descObjRequests, float64(n), op)
		}
		for op, n := range o.Failures {
			counter(descObjFailures, float64(n), op)
		}
		counter(descObjRetries, float64(o.Retries))
		counter(descObjBytes, float64(o.BytesUp), "up")
		counter(descObjBytes, float64(o.BytesDown), "down")
		counter(descPackCacheHits, float64(o.CacheHits))
		counter(descPackCacheMiss, float64(o.CacheMiss))
		gauge(descPackCacheBytes, float64(o.CacheBytes))
		gauge(descPackCacheLimit, float64(o.CacheLimit))
	}
}
