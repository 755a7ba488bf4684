package api

import (
	"fmt"
	"net/http"
	"strconv"

	"csbs/catalog"
)

// Paging. A listing (GET /v1/backups, /v1/jobs, /v1/servers,
// /v1/policies, /v1/restores, /v1/projects) takes ?limit=N (0 or absent:
// everything) and ?after=CURSOR. The body is the same JSON array as
// without paging; when more items follow, the answer carries the cursor
// of the last item in the X-Csbs-Next header, and ?after=CURSOR returns
// the next page. A cursor is the sort key of an item and its id (see
// catalog.Page), so it stays valid when that item is deleted; the id of
// an item that still exists works as a cursor too.

// HeaderNext carries the cursor of the next page of a listing.
const HeaderNext = "X-Csbs-Next"

// maxLimit bounds ?limit.
const maxLimit = 100000

// paged is a listing page; wrap writes items as the body and next in
// HeaderNext.
type paged struct {
	items any
	next  string
}

// pageOf reads ?limit and ?after.
func pageOf(r *http.Request) (catalog.Page, error) {
	q := r.URL.Query()
	pg := catalog.Page{After: q.Get("after")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxLimit {
			return pg, fmt.Errorf("%w: limit=%q: want 0 (no limit) to %d", catalog.ErrInvalid, v, maxLimit)
		}
		pg.Limit = n
	}
	return pg, nil
}

func writePaged(w http.ResponseWriter, p paged) any {
	if p.next != "" {
		w.Header().Set(HeaderNext, p.next)
	}
	return p.items
}
