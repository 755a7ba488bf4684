package scheduler

import (
	"fmt"
	"time"

	"csbs/catalog"
)

// JobRetention says how long the catalog keeps finished jobs (queued
// and running ones always stay): a finished job goes once it ended
// longer ago than Keep (KeepFailed for a failed job) and it is not one
// of the KeepLast newest finished jobs of its kind. A zero Keep or
// KeepFailed keeps those jobs forever.
type JobRetention struct {
	Keep       time.Duration
	KeepFailed time.Duration
	KeepLast   int
}

// pruneEvery is how often the scheduler prunes job history.
const pruneEvery = time.Hour

// pruneBatch bounds the deletions of one transaction.
const pruneBatch = 500

// Expired reports whether a finished job, the rank-th newest finished
// job of its kind (0 = newest), is past retention at now.
func (r JobRetention) Expired(j catalog.JobSummary, rank int, now time.Time) bool {
	if !j.Finished() || rank < r.KeepLast {
		return false
	}
	limit := r.Keep
	if j.State == catalog.JobFailed {
		limit = r.KeepFailed
	}
	if limit == 0 {
		return false
	}
	end := j.Ended
	if end.IsZero() {
		end = j.Created
	}
	return now.Sub(end) > limit
}

// PruneJobs deletes the jobs past retention r at now, reading the job
// index (not the jobs), a batch per transaction, and returns how many
// it deleted.
func PruneJobs(cat *catalog.Catalog, r JobRetention, now time.Time) (int, error) {
	if r.Keep == 0 && r.KeepFailed == 0 {
		return 0, nil
	}
	total := 0
	for _, kind := range catalog.JobKinds() {
		for {
			n := 0
			err := cat.Release(func(tx *catalog.Txn) error {
				n = 0 // a retried transaction starts again
				rank := 0
				err := tx.EachJob(kind, func(s catalog.JobSummary) (bool, error) {
					if !s.Finished() {
						return true, nil
					}
					rank++
					if !r.Expired(s, rank-1, now) {
						return true, nil
					}
					if err := tx.DeleteJobID(s.ID); err != nil {
						return false, err
					}
					n++
					return n < pruneBatch, nil
				})
				return err
			})
			if err != nil {
				return total, fmt.Errorf("prune %s jobs: %w", kind, err)
			}
			total += n
			if n < pruneBatch {
				break
			}
		}
	}
	return total, nil
}
