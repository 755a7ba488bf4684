package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"csbs/catalog"
)

// rebuildIndex runs csbs store rebuild-index as a job: the index and the
// pack table from the footers of the packs the backend holds.
func (e executor) rebuildIndex(ctx context.Context, j catalog.Job) (catalog.Job, error) {
	st, err := e.d.store.RebuildIndex(ctx)
	if err != nil {
		return j, err
	}
	note := fmt.Sprintf("listed %d packs (%d blocks): %d packs and %d blocks added to the index, %d blocks pointed at a surviving copy, %d already indexed",
		st.PacksListed, st.BlocksListed, st.PacksAdded, st.BlocksAdded, st.BlocksRepointed, st.BlocksKept)
	if st.PacksMissing > 0 {
		note += fmt.Sprintf("; %d packs of the index are missing from the store (run csbs scrub to mark the backups that need them)", st.PacksMissing)
	}
	if n := len(st.Unreadable); n > 0 {
		shown := st.Unreadable[:min(n, 3)]
		note += fmt.Sprintf("; %d packs unreadable, not indexed: %s", n, strings.Join(shown, "; "))
		e.d.log.Error("rebuild-index: unreadable packs", "count", n, "first", shown)
	}
	j.Note = note + "; took " + st.Duration.Round(time.Millisecond).String()
	return j, nil
}
