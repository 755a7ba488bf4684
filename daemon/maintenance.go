package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/config"
	"csbs/maintenance"
)

// gc runs garbage collection as a job.
func (e executor) gc(ctx context.Context, j catalog.Job) (catalog.Job, error) {
	st, err := e.d.store.GC(ctx)
	if err != nil {
		return j, err
	}
	e.d.metrics.GCFreedBytes.Add(float64(st.FreedBytes))
	e.d.metrics.GCLastSuccess.Set(float64(e.d.clock.Now().Unix()))
	j.Note = gcNote(st)
	return j, nil
}

// scrub verifies every block as a job and marks the backups that use a
// damaged or missing block (and clears the mark of repaired ones).
func (e executor) scrub(ctx context.Context, j catalog.Job, progress func(done, total int64)) (catalog.Job, error) {
	rep, err := e.d.store.Scrub(ctx, progress)
	if err != nil {
		return j, err
	}
	e.d.metrics.ScrubDamaged.Set(float64(len(rep.Damaged)))
	e.d.metrics.ScrubLastSuccess.Set(float64(e.d.clock.Now().Unix()))
	bad := map[string]bool{}
	for _, id := range rep.DamagedMaps {
		bad[id.String()] = true
	}
	var damaged []string
	err = e.d.cat.Release(func(tx *catalog.Txn) error {
		all, err := tx.AllBackups()
		if err != nil {
			return err
		}
		for _, b := range all {
			now := false
			for _, d := range b.Disks {
				now = now || bad[d.MapID]
			}
			if now {
				damaged = append(damaged, b.Name)
			}
			if now != b.Damaged {
				b.Damaged = now
				if err := tx.PutBackup(b); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return j, err
	}
	j.Note = scrubNote(rep, damaged)
	if len(rep.Damaged) > 0 {
		e.d.log.Error("scrub found damaged blocks", "blocks", len(rep.Damaged), "backups", damaged)
	}
	return j, nil
}

// gcNote is a GC job's one-line summary.
func gcNote(st blockstore.GCStats) string {
	note := fmt.Sprintf("freed %d blocks (%s); disk %s -> %s", st.FreedBlocks, humanize.IBytes(uint64(st.FreedBytes)),
		humanize.IBytes(uint64(max(st.DiskBefore, 0))), humanize.IBytes(uint64(max(st.DiskAfter, 0))))
	if n := st.PacksDeleted + st.OrphanPacks; n > 0 || st.PacksRepacked > 0 {
		note += fmt.Sprintf("; %d packs deleted, %d repacked", n, st.PacksRepacked)
	}
	if st.RepackSkipped > 0 {
		note += fmt.Sprintf("; %d packs not repacked for lack of free space", st.RepackSkipped)
	}
	if st.KeptInFlight > 0 {
		note += fmt.Sprintf("; %d blocks kept for backups in progress", st.KeptInFlight)
	}
	return note + "; took " + st.Duration.Round(time.Millisecond).String()
}

// scrubNote is a scrub job's one-line summary.
func scrubNote(rep blockstore.ScrubReport, damaged []string) string {
	note := fmt.Sprintf("checked %d blocks (%s) in %d packs", rep.Blocks, humanize.IBytes(uint64(rep.Bytes)), rep.Packs)
	if len(rep.Damaged) == 0 && len(damaged) == 0 {
		return note + "; no damage"
	}
	note += fmt.Sprintf("; %d damaged blocks removed", len(rep.Damaged))
	if len(damaged) > 0 {
		note += fmt.Sprintf("; damaged backups: %s (a new backup of the same data repairs them)", strings.Join(damaged, ", "))
	}
	return note
}

// storeStats answers csbs store stats: the whole store, and per project
// the logical bytes of its backups and the bytes its backups added.
func (d *Daemon) storeStats(ctx context.Context, project string, admin bool) (api.StoreStats, error) {
	st, err := d.store.Stats(ctx)
	if err != nil {
		return api.StoreStats{}, err
	}
	out := api.StoreStats{Stats: st, Projects: []api.ProjectStats{}}
	var referenced int64
	err = d.cat.View(func(tx *catalog.Txn) error {
		ps, err := tx.Projects()
		if err != nil {
			return err
		}
		for _, p := range ps {
			if !admin && p.ID != project {
				continue
			}
			bst, err := tx.BackupStats(p.ID)
			if err != nil {
				return err
			}
			ps := api.ProjectStats{Project: p.Name, Backups: int(bst.Backups), LogicalBytes: bst.LogicalBytes,
				DataBytes: bst.DataBlocks * int64(st.BlockSize), AddedBytes: bst.AddedBytes}
			referenced += ps.DataBytes
			out.Projects = append(out.Projects, ps)
		}
		return nil
	})
	if st.RawBytes > 0 && admin {
		out.DedupeRatio = float64(referenced) / float64(st.RawBytes)
	}
	if st.StoredBytes > 0 {
		out.CompressionRatio = float64(st.RawBytes) / float64(st.StoredBytes)
	}
	if !admin {
		out.Stats = blockstore.Stats{BlockSize: st.BlockSize} // store-wide figures are the admin's
	}
	return out, err
}

// schedule is the maintenance timing of a configured gc or scrub.
func schedule(p config.Periodic) maintenance.Schedule {
	return maintenance.Schedule{Every: time.Duration(p.Every), Daily: p.Schedule, Timezone: p.Timezone}
}

// submitMaintenance queues a scheduled gc or scrub in the default project,
// where the admin's `csbs job ls` shows it beside the ones run by hand.
func (d *Daemon) submitMaintenance(kind string) error {
	var project string
	err := d.cat.View(func(tx *catalog.Txn) error {
		p, err := tx.ProjectByName(catalog.DefaultProject)
		project = p.ID
		return err
	})
	if err != nil {
		return fmt.Errorf("find the default project for a scheduled %s: %w", kind, err)
	}
	_, err = d.runner.Submit(catalog.Job{Project: project, Kind: kind, Note: "scheduled"})
	return err
}
