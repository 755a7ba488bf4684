package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
)

// MountChange says that a commit changed what the FUSE tree shows: a
// project appeared or went (Server == ""), or the available Enhanced
// backup Backup of server name Server in project Project appeared, went
// or changed.
type MountChange struct {
	Project     string // id
	ProjectName string // set for a project's own change
	Server      string // server name
	Backup      string // backup name
}

// watchProbe is where WatchMounts writes its probe.
const watchProbe = "c/meta/watch/"

// watchReady bounds the wait for a subscription to be in place.
const watchReady = 10 * time.Second

// WatchMounts calls fn, in a goroutine of its own, after each commit
// that changes the FUSE tree's index entries (from any transaction, the
// block store's commits included), until ctx ends. It returns once the
// subscription is in place, so that every commit after it is seen; an
// error means no changes will be reported. fn runs after the commit is
// visible to new transactions, typically within milliseconds.
func (c *Catalog) WatchMounts(ctx context.Context, fn func([]MountChange)) error {
	probe := watchProbe + randomHex(8)
	ready := make(chan struct{})
	done := make(chan error, 1)
	mountPrefix := string(ixPrefix(ixMount))
	projectPrefix := string(ixPrefix(ixProjectName))
	go func() {
		seen := false
		done <- c.db.Subscribe(ctx, func(kvs *badger.KVList) error {
			var changes []MountChange
			dedup := map[MountChange]bool{}
			for _, kv := range kvs.Kv {
				k := string(kv.Key)
				var ch MountChange
				switch {
				case k == probe:
					if !seen {
						seen = true
						close(ready)
					}
					continue
				case strings.HasPrefix(k, mountPrefix):
					f := splitFields(k[len(mountPrefix):])
					if len(f) != 4 {
						continue
					}
					ch = MountChange{Project: f[0], Server: f[1], Backup: f[2]}
				case strings.HasPrefix(k, projectPrefix):
					f := splitFields(k[len(projectPrefix):])
					if len(f) != 2 {
						continue
					}
					ch = MountChange{Project: f[1], ProjectName: f[0]}
				default:
					continue
				}
				if !dedup[ch] {
					dedup[ch] = true
					changes = append(changes, ch)
				}
			}
			if len(changes) > 0 {
				fn(changes)
			}
			return nil
		}, []pb.Match{{Prefix: []byte(mountPrefix)}, {Prefix: []byte(projectPrefix)}, {Prefix: []byte(probe)}})
	}()
	// The subscription registers in its goroutine: write the probe until
	// it comes back through it.
	deadline := time.Now().Add(watchReady)
	for {
		err := c.update(WriteRelease, func(tx *Txn) error {
			tx.wrote = true
			return tx.t.Delete([]byte(probe))
		})
		if err != nil {
			return fmt.Errorf("watch the catalog: %w", err)
		}
		select {
		case <-ready:
			return nil
		case err := <-done:
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("watch the catalog: %w", errors.Join(err, errors.New("subscription ended")))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("watch the catalog: the subscription did not start within %s", watchReady)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// MountServer returns the server directory of a server name in the FUSE
// tree: the creation time of its newest available Enhanced backup (of
// server serverID only, when set), from one index entry or a few.
func (tx *Txn) MountServer(project, server, serverID string) (MountDir, error) {
	it := tx.t.NewIterator(badger.IteratorOptions{Prefix: ixPrefix(ixMountTime, project, server), Reverse: true})
	defer it.Close()
	newest, err := tx.newestMount(it, project, server, serverID)
	if err != nil {
		return MountDir{}, err
	}
	if newest.IsZero() {
		return MountDir{}, notFoundf("server %q with Enhanced backups", server)
	}
	return MountDir{Name: server, Newest: newest}, nil
}
