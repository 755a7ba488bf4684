package catalog

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// Counters. A counter group (the backups of a project, the jobs by kind
// and state) is a base record plus deltas: every write that changes a
// count adds a delta under a key of its own, in the same transaction as
// the object. Nothing reads a counter to change it, so writers never
// conflict over one (a backup's commit transaction is not retried), and
// the sum of base and deltas is always exactly what the objects say,
// also after a crash. fold merges the deltas into the base once enough
// have gathered; it conflicts only with another fold.

const counterRoot = "c/n/"

// baseName is the base record's name in a group; delta names are hex.
const baseName = "base"

// foldAt is how many deltas a reader tolerates before the group is
// folded.
const foldAt = 64

func counterPrefix(group string) []byte { return []byte(counterRoot + group + "/") }

func (tx *Txn) addDelta(group string, fields map[string]int64) error {
	var id [10]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("counter delta id: %w", err)
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	if err := tx.t.Set(append(counterPrefix(group), hex.EncodeToString(id[:])...), b); err != nil {
		return fmt.Errorf("write counter %s: %w", group, err)
	}
	if tx.touched == nil {
		tx.touched = map[string]int{}
	}
	tx.touched[group]++
	return nil
}

// counters sums a group's base and deltas.
func (tx *Txn) counters(group string) (map[string]int64, error) {
	out := map[string]int64{}
	n := 0
	err := tx.scanCounters(group, func(_ []byte, fields map[string]int64) {
		n++
		for f, v := range fields {
			out[f] += v
		}
	})
	if n > foldAt {
		tx.noteFold(group)
	}
	return out, err
}

func (tx *Txn) scanCounters(group string, fn func(key []byte, fields map[string]int64)) error {
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: counterPrefix(group), PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		var fields map[string]int64
		if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &fields) }); err != nil {
			return fmt.Errorf("decode counter %s: %w", it.Item().Key(), err)
		}
		fn(it.Item().KeyCopy(nil), fields)
	}
	return nil
}

// noteFold asks the catalog to fold group after the transaction.
func (tx *Txn) noteFold(group string) {
	if tx.touched == nil {
		tx.touched = map[string]int{}
	}
	tx.touched[group] += foldAt
}

// fold merges a group's deltas into its base.
func (tx *Txn) fold(group string) error {
	sum := map[string]int64{}
	var keys [][]byte
	err := tx.scanCounters(group, func(k []byte, fields map[string]int64) {
		keys = append(keys, k)
		for f, v := range fields {
			sum[f] += v
		}
	})
	if err != nil || len(keys) <= 1 {
		return err
	}
	for f, v := range sum {
		if v == 0 {
			delete(sum, f)
		}
	}
	tx.wrote = true
	for _, k := range keys {
		if err := tx.t.Delete(k); err != nil {
			return fmt.Errorf("fold counter %s: %w", group, err)
		}
	}
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	if err := tx.t.Set(append(counterPrefix(group), baseName...), b); err != nil {
		return fmt.Errorf("fold counter %s: %w", group, err)
	}
	return nil
}

// afterCommit folds the groups that have gathered enough deltas. A
// refused fold (a full disk) is left for later: the sums stay right.
func (c *Catalog) afterCommit(touched map[string]int) {
	if len(touched) == 0 {
		return
	}
	var due []string
	c.foldMu.Lock()
	for g, n := range touched {
		c.pending[g] += n
		if c.pending[g] >= foldAt {
			due = append(due, g)
			delete(c.pending, g)
		}
	}
	c.foldMu.Unlock()
	for _, g := range due {
		_ = c.update(WriteRelease, func(tx *Txn) error { return tx.fold(g) })
	}
}

// BackupStats are the counts of a project's backups, kept as counters.
type BackupStats struct {
	Backups      int64            `json:"backups"`
	ByStatus     map[string]int64 `json:"by_status"`
	Damaged      int64            `json:"damaged"`
	LogicalBytes int64            `json:"logical_bytes"` // sum of disk sizes
	AddedBytes   int64            `json:"added_bytes"`   // what the backups added to the store
	DataBlocks   int64            `json:"data_blocks"`   // non-zero blocks referenced
}

// BackupStats returns a project's backup counts without reading its
// backups.
func (tx *Txn) BackupStats(project string) (BackupStats, error) {
	f, err := tx.counters(grpBackups + "/" + escField(project))
	st := BackupStats{ByStatus: map[string]int64{}, Backups: f["backups"], Damaged: f["damaged"],
		LogicalBytes: f["logical_bytes"], AddedBytes: f["added_bytes"], DataBlocks: f["data_blocks"]}
	for k, v := range f {
		if s, ok := strings.CutPrefix(k, "status:"); ok && v != 0 {
			st.ByStatus[s] = v
		}
	}
	return st, err
}

// JobCounts returns how many jobs the catalog keeps, by kind and state.
func (tx *Txn) JobCounts() (map[[2]string]int64, error) {
	f, err := tx.counters(grpJobs)
	out := map[[2]string]int64{}
	for k, v := range f {
		kind, state, ok := strings.Cut(k, "/")
		if ok && v != 0 {
			out[[2]string{kind, state}] = v
		}
	}
	return out, err
}
