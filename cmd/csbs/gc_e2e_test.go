package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// allocated is what `du` reports for a tree: allocated bytes.
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil // deleted while walking
		}
		if fi.Mode().IsRegular() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// randomImage writes size bytes of seeded random data (incompressible,
// nothing to dedupe).
func randomImage(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGCGivesSpaceBackE2E: `backup rm` of every backup, then `csbs gc`:
// the store's allocated bytes (du) come back to within 64 MiB of an
// empty store's, and `store stats` says the same figure du does. Before
// the pack store, 300 MiB of backups deleted and collected left du
// unchanged, also after a restart.
func TestGCGivesSpaceBackE2E(t *testing.T) {
	t.Parallel()
	a := startAppliance(t, "")
	store := filepath.Join(a.dir, "data", "store")
	empty := allocated(t, store)
	disk := filepath.Join(a.dir, "vda.img")
	data := randomImage(t, disk, 96<<20, 1)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+disk)
	a.ok("backup", "create", "web1", "--name", "b1", "--wait")
	r := rand.New(rand.NewPCG(2, 2))
	for off := 0; off < len(data); off += 1 << 20 { // change a quarter
		if off%(4<<20) == 0 {
			for i := off; i < off+1<<20; i++ {
				data[i] = byte(r.Uint32())
			}
		}
	}
	if err := os.WriteFile(disk, data, 0o600); err != nil {
		t.Fatal(err)
	}
	a.ok("backup", "create", "web1", "--name", "b2", "--wait")
	full := allocated(t, store)
	if full-empty < 96<<20 {
		t.Fatalf("two backups of 96 MiB of random data take only %d MiB", (full-empty)>>20)
	}
	a.ok("backup", "rm", "b1")
	a.ok("backup", "rm", "b2")
	a.ok("gc")
	after := allocated(t, store)
	t.Logf("store: empty %d MiB, with backups %d MiB, all deleted + gc %d MiB", empty>>20, full>>20, after>>20)
	if after-empty > 64<<20 {
		t.Fatalf("store with every backup deleted and collected: %d MiB allocated, an empty one %d MiB", after>>20, empty>>20)
	}
	var st struct {
		DiskBytes int64 `json:"disk_bytes"`
		Blocks    int64 `json:"blocks"`
	}
	a.okJSON(&st, "store", "stats")
	if st.Blocks != 0 {
		t.Fatalf("store stats after deleting everything: %d blocks", st.Blocks)
	}
	if du := allocated(t, store); st.DiskBytes > du+16<<20 || st.DiskBytes < du-16<<20 {
		t.Fatalf("store stats says %d MiB on disk, du %d MiB", st.DiskBytes>>20, du>>20)
	}
	a.stop()
	a.start()
	if again := allocated(t, store); again-empty > 64<<20 {
		t.Fatalf("after a restart the store takes %d MiB again", again>>20)
	}
}

// TestGCSoakBesideBackupsE2E is the daemon-level soak of the GC race
// that lost new backups: `csbs gc` in a loop while two servers are
// backed up again and again from data that shares most blocks with the
// backup just deleted; every backup is restored and compared with its
// source before it is deleted.
func TestGCSoakBesideBackupsE2E(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("soak skipped in -short mode")
	}
	a := startAppliance(t, "[store]\nblock_size = \"4KiB\"\n")
	const servers, rounds = 2, 8
	stop := make(chan struct{})
	var gcs atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if out, errOut, code := a.run(nil, "gc"); code != 0 {
				t.Errorf("gc: %s%s", out, errOut)
				return
			}
			gcs.Add(1)
		}
	}()
	var lanes sync.WaitGroup
	for s := range servers {
		lanes.Add(1)
		go func() {
			defer lanes.Done()
			name := fmt.Sprintf("web%d", s)
			disk := filepath.Join(a.dir, name+".img")
			data := randomImage(t, disk, 4<<20, uint64(10+s))
			if out, errOut, code := a.run(nil, "server", "add", "--name", name, "--disk", "vda="+disk); code != 0 {
				t.Errorf("server add: %s%s", out, errOut)
				return
			}
			r := rand.New(rand.NewPCG(uint64(s), 3))
			prev := ""
			var prevData []byte
			for k := range rounds {
				for i := range 40 { // change 40 random 4 KiB blocks
					off := r.IntN(len(data)/4096) * 4096
					for j := off; j < off+4096; j++ {
						data[j] = byte(r.Uint32() + uint32(i))
					}
				}
				if err := os.WriteFile(disk, data, 0o600); err != nil {
					t.Error(err)
					return
				}
				bk := fmt.Sprintf("%s-b%d", name, k)
				done := make(chan string, 1)
				go func() {
					out, errOut, code := a.run(nil, "backup", "create", name, "--name", bk, "--wait")
					if code != 0 {
						done <- out + errOut
					}
					close(done)
				}()
				if prev != "" { // delete the previous backup while the next is taken
					target := filepath.Join(a.dir, prev+".restored")
					if out, errOut, code := a.run(nil, "restore", "start", prev, "--disk", "vda="+target, "--wait"); code != 0 {
						t.Errorf("restore %s: %s%s", prev, out, errOut)
					} else if got, _ := os.ReadFile(target); !bytes.Equal(got, prevData) {
						t.Errorf("backup %s restores wrong bytes", prev)
					}
					os.Remove(target)
					if out, errOut, code := a.run(nil, "backup", "rm", prev); code != 0 {
						t.Errorf("backup rm %s: %s%s", prev, out, errOut)
					}
				}
				if msg, failed := <-done; failed {
					t.Errorf("backup %s: %s", bk, msg)
					return
				}
				prev, prevData = bk, bytes.Clone(data)
			}
			target := filepath.Join(a.dir, prev+".restored")
			if out, errOut, code := a.run(nil, "restore", "start", prev, "--disk", "vda="+target, "--wait"); code != 0 {
				t.Errorf("restore %s: %s%s", prev, out, errOut)
			} else if got, _ := os.ReadFile(target); !bytes.Equal(got, prevData) {
				t.Errorf("backup %s restores wrong bytes", prev)
			}
		}()
	}
	lanes.Wait()
	close(stop)
	wg.Wait()
	t.Logf("%d GC runs beside %d backups", gcs.Load(), servers*rounds)
}
