package catalog

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// JobKinds returns the kinds of job, for work done per kind.
func JobKinds() []string {
	return []string{JobBackup, JobRestore, JobHydrate, JobRetention, JobGC, JobScrub, JobReplicate}
}

// Jobs lists a project's jobs ("" for every project), newest first.
func (tx *Txn) Jobs(project string) ([]Job, error) {
	js, _, err := tx.JobPage(project, Page{})
	return js, err
}

// JobPage lists a project's jobs ("" for every project) newest first, a
// page at a time.
func (tx *Txn) JobPage(project string, pg Page) ([]Job, string, error) {
	prefix := ixPrefix(ixJobTime)
	if project != "" {
		prefix = ixPrefix(ixJobProject, project)
	}
	return pageOf[Job](tx, KindJob, prefix, true, pg, nil)
}

// ActiveJobs lists the queued and running jobs of a project ("" for
// every project), newest first, reading only those.
func (tx *Txn) ActiveJobs(project string) ([]Job, error) {
	prefix := ixPrefix(ixJobActive, project)
	if project == "" {
		prefix = ixPrefix(ixJobActive)
	}
	js, _, err := pageOf[Job](tx, KindJob, prefix, false, Page{}, nil)
	sortJobs(js, true)
	return js, err
}

// FailedJobsSince counts a project's failed jobs that ended at or after
// since, reading only those.
func (tx *Txn) FailedJobsSince(project string, since time.Time) (int, error) {
	n := 0
	bound := timeField(since)
	err := tx.scan(ixPrefix(ixJobFailed, project), true, false, "", func(cursor, _ string, _ []byte) (bool, error) {
		if cursor < bound {
			return false, nil
		}
		n++
		return true, nil
	})
	return n, err
}

// LastFinishedJob returns the newest finished job of a kind in any
// project, and false if there is none.
func (tx *Txn) LastFinishedJob(kind string) (Job, bool, error) {
	return tx.NewestJob(kind, func(j Job) bool { return j.Finished() })
}

// NewestJob returns the newest job of a kind that match accepts, and
// false if there is none; it reads jobs of that kind only, newest first,
// until one matches.
func (tx *Txn) NewestJob(kind string, match func(Job) bool) (Job, bool, error) {
	var out Job
	found := false
	err := tx.scan(ixPrefix(ixJobKind, kind), true, false, "", func(_, id string, _ []byte) (bool, error) {
		j, err := get[Job](tx, KindJob, id)
		if err != nil {
			return false, fmt.Errorf("job index: %w", err)
		}
		if match(j) {
			out, found = j, true
			return false, nil
		}
		return true, nil
	})
	return out, found, err
}

// JobSummary is what the job index knows of a job without reading it.
type JobSummary struct {
	ID      string
	Kind    string
	State   string
	Created time.Time
	Ended   time.Time
}

// Finished reports whether the job reached a final state.
func (s JobSummary) Finished() bool { return Job{State: s.State}.Finished() }

// EachJob calls fn for the jobs of a kind, newest first, from the index
// alone, until fn returns false.
func (tx *Txn) EachJob(kind string, fn func(JobSummary) (bool, error)) error {
	return tx.scan(ixPrefix(ixJobKind, kind), true, true, "", func(cursor, id string, val []byte) (bool, error) {
		s := JobSummary{ID: id, Kind: kind}
		created, _, _ := strings.Cut(cursor, "/")
		state, ended, _ := strings.Cut(string(val), " ")
		s.State = state
		var err error
		if s.Created, err = time.Parse(timeLayout, created); err != nil {
			return false, fmt.Errorf("job index entry %s: %w", cursor, err)
		}
		if s.Ended, err = time.Parse(timeLayout, ended); err != nil {
			return false, fmt.Errorf("job index entry %s: %w", cursor, err)
		}
		return fn(s)
	})
}

// jobKindValue is a job's value in the kind index: what retention needs.
func jobKindValue(j Job) []byte { return []byte(j.State + " " + timeField(j.Ended)) }

func sortJobs(js []Job, newestFirst bool) {
	slices.SortFunc(js, func(a, b Job) int {
		c := a.Created.Compare(b.Created)
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if newestFirst {
			return -c
		}
		return c
	})
}

// Job returns a job of the project by id.
func (tx *Txn) Job(project, id string) (Job, error) {
	j, err := get[Job](tx, KindJob, id)
	if err != nil {
		return Job{}, err
	}
	if project != "" && j.Project != project {
		return Job{}, notFoundf("job %s", id)
	}
	return j, nil
}

// PutJob writes a job.
func (tx *Txn) PutJob(j Job) error { return put(tx, KindJob, j.ID, j) }

// DeleteJob removes a job record.
func (tx *Txn) DeleteJob(j Job) error { return del(tx, KindJob, j.ID) }

// DeleteJobID removes a job record by id.
func (tx *Txn) DeleteJobID(id string) error { return del(tx, KindJob, id) }

// Restores lists a project's restores ("" for all), newest first.
func (tx *Txn) Restores(project string) ([]Restore, error) {
	if project == "" {
		rs, err := list[Restore](tx, KindRestore, nil)
		sortRestores(rs)
		return rs, err
	}
	rs, _, err := tx.RestorePage(project, Page{})
	return rs, err
}

// RestorePage lists a project's restores newest first, a page at a time.
func (tx *Txn) RestorePage(project string, pg Page) ([]Restore, string, error) {
	return pageOf[Restore](tx, KindRestore, ixPrefix(ixRestoreTime, project), true, pg, nil)
}

func sortRestores(rs []Restore) {
	slices.SortFunc(rs, func(a, b Restore) int { return b.Created.Compare(a.Created) })
}

// Restore returns a restore of the project by id.
func (tx *Txn) Restore(project, id string) (Restore, error) {
	r, err := get[Restore](tx, KindRestore, id)
	if err != nil {
		return Restore{}, err
	}
	if project != "" && r.Project != project {
		return Restore{}, notFoundf("restore %s", id)
	}
	return r, nil
}

// PutRestore writes a restore.
func (tx *Txn) PutRestore(r Restore) error { return put(tx, KindRestore, r.ID, r) }
