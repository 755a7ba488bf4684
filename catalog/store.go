package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// ReadStats counts what catalog reads touched since the catalog was
// made: objects decoded and index entries visited. Tests use it to prove
// that a lookup does not scan; the catalog benchmark prints it.
type ReadStats struct {
	Objects      int64 // object records read and decoded
	IndexEntries int64 // index entries visited
}

type readCounters struct{ objects, entries atomic.Int64 }

// ReadStats returns the read counters.
func (c *Catalog) ReadStats() ReadStats {
	return ReadStats{Objects: c.reads.objects.Load(), IndexEntries: c.reads.entries.Load()}
}

func (tx *Txn) countObject() {
	if tx.reads != nil {
		tx.reads.objects.Add(1)
	}
}

func (tx *Txn) countEntry() {
	if tx.reads != nil {
		tx.reads.entries.Add(1)
	}
}

func key(kind, id string) []byte { return []byte("c/" + kind + "/" + id) }

// raw returns the stored form of an object, or nil if there is none.
func (tx *Txn) raw(kind, id string) ([]byte, error) {
	item, err := tx.t.Get(key(kind, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", kind, id, err)
	}
	tx.countObject()
	b, err := item.ValueCopy(nil)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", kind, id, err)
	}
	return b, nil
}

func get[T any](tx *Txn, kind, id string) (T, error) {
	var v T
	b, err := tx.raw(kind, id)
	if err != nil {
		return v, err
	}
	if b == nil {
		return v, notFoundf("%s %s", kind, id)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode %s %s: %w", kind, id, err)
	}
	return v, nil
}

// put writes an object and, for an indexed kind, moves its index entries
// and counters from what the old version contributed to what the new one
// does, in the same transaction: an index can never disagree with its
// objects.
func put(tx *Txn, kind, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", kind, id, err)
	}
	tx.wrote = true
	if def, ok := kinds[kind]; ok {
		old, err := tx.raw(kind, id)
		if err != nil {
			return err
		}
		var before *indexer
		if old != nil {
			if before, err = def.fromRaw(old); err != nil {
				return fmt.Errorf("index of the stored %s %s: %w", kind, id, err)
			}
		}
		if err := tx.reindex(before, def.fromValue(v)); err != nil {
			return fmt.Errorf("index %s %s: %w", kind, id, err)
		}
	}
	if err := tx.t.Set(key(kind, id), b); err != nil {
		return fmt.Errorf("write %s %s: %w", kind, id, err)
	}
	return nil
}

// del removes an object with its index entries and counters.
func del(tx *Txn, kind, id string) error {
	tx.wrote = true
	if def, ok := kinds[kind]; ok {
		old, err := tx.raw(kind, id)
		if err != nil {
			return err
		}
		if old != nil {
			before, err := def.fromRaw(old)
			if err != nil {
				return fmt.Errorf("index of the stored %s %s: %w", kind, id, err)
			}
			if err := tx.reindex(before, nil); err != nil {
				return fmt.Errorf("unindex %s %s: %w", kind, id, err)
			}
		}
	}
	if err := tx.t.Delete(key(kind, id)); err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	return nil
}

// reindex replaces the entries and counts of before (nil: none) by those
// of after (nil: none). Only differences are written, so an update that
// changes no indexed field writes no index key.
func (tx *Txn) reindex(before, after *indexer) error {
	var old, cur map[string][]byte
	if before != nil {
		old = before.entries
	}
	if after != nil {
		cur = after.entries
	}
	for k := range old {
		if _, keep := cur[k]; !keep {
			if err := tx.t.Delete([]byte(k)); err != nil {
				return err
			}
		}
	}
	for k, v := range cur {
		if ov, had := old[k]; had && bytes.Equal(ov, v) {
			continue
		}
		if err := tx.t.Set([]byte(k), v); err != nil {
			return err
		}
	}
	deltas := map[string]map[string]int64{}
	add := func(ix *indexer, sign int64) {
		if ix == nil {
			return
		}
		for g, fields := range ix.counts {
			for f, n := range fields {
				if deltas[g] == nil {
					deltas[g] = map[string]int64{}
				}
				deltas[g][f] += sign * n
			}
		}
	}
	add(after, 1)
	add(before, -1)
	for g, fields := range deltas {
		for f, n := range fields {
			if n == 0 {
				delete(fields, f)
			}
		}
		if len(fields) == 0 {
			continue
		}
		if err := tx.addDelta(g, fields); err != nil {
			return err
		}
	}
	return nil
}

// list returns every object of a kind for which keep returns true. It
// reads the whole kind: for kinds that stay small (policies, exports,
// mounts), and for whole-store work (scrub's damage marks, the index
// check).
func list[T any](tx *Txn, kind string, keep func(T) bool) ([]T, error) {
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: key(kind, ""), PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	var out []T
	for it.Rewind(); it.Valid(); it.Next() {
		var v T
		tx.countObject()
		if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err != nil {
			return nil, fmt.Errorf("decode %s: %w", it.Item().Key(), err)
		}
		if keep == nil || keep(v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// Page asks for part of a listing: at most Limit items (0: all) that
// come after the item whose cursor is After ("" : from the start).
type Page struct {
	Limit int
	After string
}

// A cursor names a position in a listing. It is the sort key of an item
// followed by its id ("2025-03-01T02:00:00.000000000Z/bk-3f9a1c2b7d4e"
// in a listing by time, "web1/srv-3f9a1c2b7d4e" in one by name), so it
// stays valid when that item is deleted; a bare id is accepted too and
// stands for its item's position while the item exists.

// scan visits the entries of an index under prefix in key order
// (reverse: from the last), starting after the cursor after, and calls fn
// with each entry's cursor, object id and value until fn returns false.
func (tx *Txn) scan(prefix []byte, reverse, values bool, after string, fn func(cursor, id string, val []byte) (bool, error)) error {
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: reverse, PrefetchValues: values, PrefetchSize: 32})
	defer it.Close()
	start := prefix
	switch {
	case after != "" && reverse:
		start = append(bytes.Clone(prefix), after...)
	case after != "":
		start = append(append(bytes.Clone(prefix), after...), 0)
	case reverse:
		start = append(bytes.Clone(prefix), 0xff)
	}
	for it.Seek(start); it.Valid(); it.Next() {
		k := it.Item().Key()
		cursor := string(k[len(prefix):])
		if reverse && after != "" && cursor == after {
			continue
		}
		tx.countEntry()
		var val []byte
		if values {
			var err error
			if val, err = it.Item().ValueCopy(nil); err != nil {
				return fmt.Errorf("read index entry %s: %w", k, err)
			}
		}
		more, err := fn(cursor, lastField(cursor), val)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// lastField returns the object id at the end of an index key or cursor.
func lastField(s string) string {
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	return unesc(s)
}

// pageOf lists the objects of kind that the index entries under prefix
// point to, in index order, keeping those keep accepts (nil: all), and
// returns the cursor of the last one when more follow.
func pageOf[T any](tx *Txn, kind string, prefix []byte, reverse bool, pg Page, keep func(T) bool) ([]T, string, error) {
	after, err := tx.resolveCursor(kind, prefix, pg.After)
	if err != nil {
		return nil, "", err
	}
	var out []T
	var last, next string
	err = tx.scan(prefix, reverse, false, after, func(cursor, id string, _ []byte) (bool, error) {
		if keep == nil && pg.Limit > 0 && len(out) == pg.Limit {
			next = last
			return false, nil
		}
		v, err := get[T](tx, kind, id)
		if err != nil {
			return false, fmt.Errorf("index %s points to a missing object: %w", prefix, err)
		}
		if keep != nil && !keep(v) {
			return true, nil
		}
		if pg.Limit > 0 && len(out) == pg.Limit {
			next = last
			return false, nil
		}
		out = append(out, v)
		last = cursor
		return true, nil
	})
	return out, next, err
}

// resolveCursor turns a page's After into an index cursor: a cursor
// stays as it is; a bare id becomes the cursor of that object's entry
// under prefix.
func (tx *Txn) resolveCursor(kind string, prefix []byte, after string) (string, error) {
	if after == "" || strings.Contains(after, "/") {
		return after, nil
	}
	b, err := tx.raw(kind, after)
	if err != nil {
		return "", err
	}
	if b == nil {
		return "", invalidf("--after %q: no %s with that id (pass the cursor a listing printed, which stays valid after a delete)", after, kind)
	}
	ix, err := kinds[kind].fromRaw(b)
	if err != nil {
		return "", err
	}
	for k := range ix.entries {
		if strings.HasPrefix(k, string(prefix)) {
			return k[len(prefix):], nil
		}
	}
	return "", invalidf("--after %q: that %s is not part of this listing", after, kind)
}
