package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"csbs/catalog"
	"csbs/scheduler"
)

// Status is the answer of GET /v1/status: one screen for an operator.
// Everything is the caller's project's, except Store's disk figures and
// the last and next GC and scrub, which only the admin sees.
type Status struct {
	Version           string    `json:"version"`
	Region            string    `json:"region"`
	AvailabilityZones []string  `json:"availability_zones"`
	Project           string    `json:"project"`
	Admin             bool      `json:"admin"`
	Started           time.Time `json:"started"`
	UptimeSeconds     int64     `json:"uptime_seconds"`
	JobsQueued        int       `json:"jobs_queued"`
	JobsRunning       int       `json:"jobs_running"`

	Store      StoreStatus           `json:"store"`
	ActiveJobs []catalog.Job         `json:"active_jobs"`
	Exports    []ExportInfo          `json:"exports"`
	Mounts     []catalog.MountRecord `json:"mounts"`
	NextRuns   []NextRun             `json:"next_runs"`
	LastGC     *catalog.Job          `json:"last_gc,omitempty"`
	LastScrub  *catalog.Job          `json:"last_scrub,omitempty"`
	NextGC     *time.Time            `json:"next_gc,omitempty"`    // admin; absent: by hand only
	NextScrub  *time.Time            `json:"next_scrub,omitempty"` // admin; absent: by hand only
	Warnings   []string              `json:"warnings"`
}

// StoreStatus is the store part of the status.
type StoreStatus struct {
	BlockSize      int   `json:"block_size"`
	Backups        int   `json:"backups"`         // the project's
	DamagedBackups int   `json:"damaged_backups"` // the project's, marked by scrub
	LogicalBytes   int64 `json:"logical_bytes"`   // sum of its backups' disk sizes
	AddedBytes     int64 `json:"added_bytes"`     // what its backups added to the store
	// Store-wide, admin only.
	DiskBytes     int64   `json:"disk_bytes,omitempty"`
	FreeBytes     int64   `json:"free_bytes,omitempty"`
	MinFreeBytes  int64   `json:"min_free_bytes,omitempty"`
	CacheHitRatio float64 `json:"cache_hit_ratio,omitempty"`
	// The read path as sized at start (store.cache_size, store.workers,
	// store.inflight_memory) and what it holds now.
	CacheBytes      int64 `json:"cache_bytes,omitempty"`
	CacheLimitBytes int64 `json:"cache_limit_bytes,omitempty"`
	CacheAuto       bool  `json:"cache_auto,omitempty"` // cache_size = "auto": sized from the machine's memory
	Workers         int   `json:"workers,omitempty"`
	// GOMAXPROCS the daemon runs with: twice the CPUs it may use (up
	// to 16 more) unless set in its environment; see daemon.Oversubscribe.
	GoMaxProcs         int   `json:"gomaxprocs,omitempty"`
	CPUs               int   `json:"cpus,omitempty"` // the CPUs the daemon may use
	InflightBytes      int64 `json:"inflight_bytes,omitempty"`
	InflightLimitBytes int64 `json:"inflight_limit_bytes,omitempty"`
	InflightPeakBytes  int64 `json:"inflight_peak_bytes,omitempty"`
	ReadCacheBytes     int64 `json:"read_cache_bytes,omitempty"` // attached exports' cache files
	// Backend is where block bytes live: local or s3; the object store's
	// figures are the admin's. Credentials are never part of the status.
	Backend     string             `json:"backend,omitempty"`
	ObjectStore *ObjectStoreStatus `json:"object_store,omitempty"`
}

// ObjectStoreStatus describes the s3 backend: where, and what it did
// since the daemon started.
type ObjectStoreStatus struct {
	Location       string           `json:"location"` // endpoint/bucket/prefix
	Requests       map[string]int64 `json:"requests"` // by operation, every attempt
	Failures       map[string]int64 `json:"failures"`
	Retries        int64            `json:"retries"`
	BytesUp        int64            `json:"bytes_up"`
	BytesDown      int64            `json:"bytes_down"`
	CacheBytes     int64            `json:"cache_bytes"`
	CacheLimit     int64            `json:"cache_limit"`
	CacheHitRatio  float64          `json:"cache_hit_ratio"`
	CachePacksHeld int              `json:"cache_packs"`
}

// NextRun is the next scheduled run of an enabled policy.
type NextRun struct {
	Policy   string    `json:"policy"`
	Time     time.Time `json:"time"`
	Timezone string    `json:"timezone"` // the policy's (IANA name; "" is UTC)
	Servers  []string  `json:"servers"`
}

// failedJobWindow is how far back failed jobs become warnings.
const failedJobWindow = 24 * time.Hour

func (s *Service) status(ctx context.Context, p principal, _ *http.Request) (any, error) {
	now := s.Clock.Now()
	st := Status{
		Version: s.Version, Region: s.Region, AvailabilityZones: s.AZs,
		Project: p.project.Name, Admin: p.admin, Started: s.Started.UTC(),
		UptimeSeconds: int64(now.Sub(s.Started).Seconds()),
		ActiveJobs:    []catalog.Job{}, Exports: []ExportInfo{}, Mounts: []catalog.MountRecord{},
		NextRuns: []NextRun{}, Warnings: []string{},
	}
	if s.Serving != nil {
		st.Exports = s.Serving.Exports(p.project.ID)
	}
	if s.Mounts != nil {
		st.Mounts = s.Mounts.List(p.project.ID)
	}
	// Everything below reads counters and small indexes: the cost does
	// not grow with the backups and jobs the catalog keeps.
	err := s.Catalog.View(func(tx *catalog.Txn) error {
		active, err := tx.ActiveJobs(p.project.ID)
		if err != nil {
			return err
		}
		for _, j := range active {
			switch j.State {
			case catalog.JobRunning:
				st.JobsRunning++
			case catalog.JobQueued:
				st.JobsQueued++
			}
			st.ActiveJobs = append(st.ActiveJobs, j)
		}
		failed, err := tx.FailedJobsSince(p.project.ID, now.Add(-failedJobWindow))
		if err != nil {
			return err
		}
		if failed > 0 {
			st.Warnings = append(st.Warnings, fmt.Sprintf("%d job(s) failed in the last 24 h (csbs job ls)", failed))
		}
		bst, err := tx.BackupStats(p.project.ID)
		if err != nil {
			return err
		}
		st.Store.Backups, st.Store.DamagedBackups = int(bst.Backups), int(bst.Damaged)
		st.Store.LogicalBytes, st.Store.AddedBytes = bst.LogicalBytes, bst.AddedBytes
		for _, flag := range []string{catalog.FlagDamaged, catalog.FlagError} {
			bs, err := tx.FlaggedBackups(flag, p.project.ID)
			if err != nil || len(bs) == 0 {
				if err != nil {
					return err
				}
				continue
			}
			names := make([]string, len(bs))
			for i, b := range bs {
				names[i] = b.Name
			}
			if flag == catalog.FlagDamaged {
				st.Warnings = append(st.Warnings, fmt.Sprintf("damaged backups: %s (a block failed verification; the next backup of the same data repairs them; csbs backup show says more)", strings.Join(names, ", ")))
			} else {
				st.Warnings = append(st.Warnings, fmt.Sprintf("backups in error state: %s (csbs backup show says why)", strings.Join(names, ", ")))
			}
		}
		pols, err := tx.Policies(p.project.ID)
		if err != nil {
			return err
		}
		for _, pol := range pols {
			if !pol.Enabled {
				continue
			}
			runs, err := scheduler.NextRuns(pol, now, 1)
			if err != nil || len(runs) == 0 {
				continue
			}
			nr := NextRun{Policy: pol.Name, Time: runs[0], Timezone: pol.Timezone, Servers: []string{}}
			if ss, err := tx.BoundServers(pol); err == nil {
				for _, sv := range ss {
					nr.Servers = append(nr.Servers, sv.Name)
				}
			}
			st.NextRuns = append(st.NextRuns, nr)
		}
		slices.SortFunc(st.NextRuns, func(a, b NextRun) int { return a.Time.Compare(b.Time) })
		if !p.admin {
			return nil
		}
		for kind, last := range map[string]**catalog.Job{catalog.JobGC: &st.LastGC, catalog.JobScrub: &st.LastScrub} {
			j, ok, err := tx.LastFinishedJob(kind)
			if err != nil {
				return err
			}
			if ok {
				*last = &j
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, j := range st.ActiveJobs {
		st.ActiveJobs[i] = s.Runner.Live(j)
	}
	if s.Status != nil {
		s.Status(ctx, p.admin, &st)
	}
	return st, nil
}

func secondsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
