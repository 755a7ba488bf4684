package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// keyHostAccessAdopted marks a catalog whose records carry ByAdmin.
var keyHostAccessAdopted = []byte("c/meta/host-access-adopted")

// AdoptLegacyHostAccess runs once per catalog: records made before csbs
// recorded who named a host path (servers' disks, restores, mounts) are
// adopted as the admin's, so that an upgrade does not stop the backups an
// operator set up. It returns a line per adopted record for the log, in
// which an admin can spot one a project token made.
func (tx *Txn) AdoptLegacyHostAccess() ([]string, error) {
	if _, err := tx.t.Get(keyHostAccessAdopted); err == nil {
		return nil, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("read catalog upgrade marker: %w", err)
	}
	var adopted []string
	servers, err := list[Server](tx, KindServer, nil)
	if err != nil {
		return nil, err
	}
	for _, s := range servers {
		changed := false
		for i := range s.Disks {
			if !s.Disks[i].ByAdmin {
				s.Disks[i].ByAdmin, changed = true, true
				adopted = append(adopted, fmt.Sprintf("server %s disk %s source %s", s.Name, s.Disks[i].Name, s.Disks[i].Source))
			}
		}
		if changed {
			if err := tx.PutServer(s); err != nil {
				return nil, err
			}
		}
	}
	restores, err := list[Restore](tx, KindRestore, nil)
	if err != nil {
		return nil, err
	}
	for _, r := range restores {
		if !r.ByAdmin {
			r.ByAdmin = true
			adopted = append(adopted, fmt.Sprintf("restore %s", r.ID))
			if err := tx.PutRestore(r); err != nil {
				return nil, err
			}
		}
	}
	mounts, err := tx.MountRecords()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if !m.ByAdmin {
			m.ByAdmin = true
			adopted = append(adopted, fmt.Sprintf("mount %s", m.Path))
			if err := tx.PutMountRecord(m); err != nil {
				return nil, err
			}
		}
	}
	if err := tx.t.Set(keyHostAccessAdopted, []byte("1")); err != nil {
		return nil, fmt.Errorf("write catalog upgrade marker: %w", err)
	}
	return adopted, nil
}

// keyIndexVersion marks a catalog whose indexes and counters are built
// for indexVersion.
var keyIndexVersion = []byte("c/meta/index-version")

// EnsureIndexes builds the indexes and counters once for a catalog
// written before they existed (or before their definition last
// changed), and returns how many objects it indexed (0: nothing to do).
// It runs at start, before anything else uses the catalog; a crash
// half-way leaves no marker, so the next start builds them again from
// scratch.
func (c *Catalog) EnsureIndexes() (int, error) {
	var have []byte
	err := c.db.View(func(t *badger.Txn) error {
		item, err := t.Get(keyIndexVersion)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		have, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read the catalog's index version: %w", err)
	}
	if string(have) == indexVersion {
		return 0, nil
	}
	if err := c.CheckSpace(WriteRelease); err != nil {
		return 0, fmt.Errorf("build catalog indexes: %w", err)
	}
	for _, prefix := range []string{indexRoot, counterRoot} {
		if err := c.db.DropPrefix([]byte(prefix)); err != nil {
			return 0, fmt.Errorf("build catalog indexes: drop old %s: %w", prefix, err)
		}
	}
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	counts := map[string]map[string]int64{}
	n := 0
	err = c.db.View(func(t *badger.Txn) error {
		for _, kind := range slices.Sorted(maps.Keys(kinds)) {
			it := t.NewIterator(badger.IteratorOptions{Prefix: key(kind, ""), PrefetchValues: true, PrefetchSize: 64})
			for it.Rewind(); it.Valid(); it.Next() {
				raw, err := it.Item().ValueCopy(nil)
				if err != nil {
					it.Close()
					return err
				}
				ix, err := kinds[kind].fromRaw(raw)
				if err != nil {
					it.Close()
					return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
				}
				for k, v := range ix.entries {
					if err := wb.Set([]byte(k), v); err != nil {
						it.Close()
						return err
					}
				}
				addCounts(counts, ix)
				n++
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("build catalog indexes: %w", err)
	}
	for g, fields := range counts {
		b, err := json.Marshal(fields)
		if err != nil {
			return 0, err
		}
		if err := wb.Set(append(counterPrefix(g), baseName...), b); err != nil {
			return 0, fmt.Errorf("build catalog counters: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, fmt.Errorf("build catalog indexes: %w", err)
	}
	err = c.update(WriteRelease, func(tx *Txn) error {
		tx.wrote = true
		return tx.t.Set(keyIndexVersion, []byte(indexVersion))
	})
	if err != nil {
		return 0, fmt.Errorf("mark catalog indexes built: %w", err)
	}
	return n, nil
}

// addCounts adds an object's counts to a sum, dropping fields that sum to
// zero.
func addCounts(sum map[string]map[string]int64, ix *indexer) {
	for g, fields := range ix.counts {
		if sum[g] == nil {
			sum[g] = map[string]int64{}
		}
		for f, v := range fields {
			sum[g][f] += v
			if sum[g][f] == 0 {
				delete(sum[g], f)
			}
		}
	}
}

// Check verifies the catalog's indexes and counters against its
// objects: every object has exactly its entries (with their values), no
// entry exists without its object, and every counter group sums to what
// the objects contribute. Tests run it after each test that writes a
// catalog; an error lists the first differences.
func (c *Catalog) Check() error {
	var problems []string
	report := func(format string, a ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, a...))
		}
	}
	err := c.db.View(func(t *badger.Txn) error {
		want := map[string][]byte{}
		owner := map[string]string{}
		counts := map[string]map[string]int64{}
		for _, kind := range slices.Sorted(maps.Keys(kinds)) {
			it := t.NewIterator(badger.IteratorOptions{Prefix: key(kind, ""), PrefetchValues: true})
			for it.Rewind(); it.Valid(); it.Next() {
				k := string(it.Item().KeyCopy(nil))
				raw, err := it.Item().ValueCopy(nil)
				if err != nil {
					it.Close()
					return err
				}
				ix, err := kinds[kind].fromRaw(raw)
				if err != nil {
					report("%s: undecodable: %v", k, err)
					continue
				}
				for ek, v := range ix.entries {
					if o, dup := owner[ek]; dup {
						report("index entry %s belongs to both %s and %s", ek, o, k)
					}
					want[ek], owner[ek] = v, k
				}
				addCounts(counts, ix)
			}
			it.Close()
		}
		it := t.NewIterator(badger.IteratorOptions{Prefix: []byte(indexRoot), PrefetchValues: true})
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().KeyCopy(nil))
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				it.Close()
				return err
			}
			w, ok := want[k]
			switch {
			case !ok:
				report("index entry %s has no object", k)
			case !bytes.Equal(w, v):
				report("index entry %s is %q, its object %s says %q", k, v, owner[k], w)
			}
			delete(want, k)
		}
		it.Close()
		for _, k := range slices.Sorted(maps.Keys(want)) {
			report("object %s lacks index entry %s", owner[k], k)
		}
		got := map[string]map[string]int64{}
		it = t.NewIterator(badger.IteratorOptions{Prefix: []byte(counterRoot), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().Key())
			g := strings.TrimPrefix(k[:strings.LastIndexByte(k, '/')], counterRoot)
			var fields map[string]int64
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &fields) }); err != nil {
				report("counter %s: %v", k, err)
				continue
			}
			addCounts(got, &indexer{counts: map[string]map[string]int64{g: fields}})
		}
		for _, g := range slices.Sorted(maps.Keys(counts)) {
			if !maps.Equal(counts[g], got[g]) && len(counts[g])+len(got[g]) > 0 {
				report("counter %s is %v, the objects say %v", g, got[g], counts[g])
			}
			delete(got, g)
		}
		for _, g := range slices.Sorted(maps.Keys(got)) {
			if len(got[g]) > 0 {
				report("counter %s is %v without objects", g, got[g])
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check catalog indexes: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("catalog indexes disagree with their objects:\n  %s", strings.Join(problems, "\n  "))
	}
	return nil
}
