package blockstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// The crash test re-runs this test binary as a child that ingests and
// commits disks in a loop, and SIGKILLs it at a seeded random moment.
func TestMain(m *testing.M) {
	if dir := os.Getenv("CSBS_CRASH_CHILD_DIR"); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

const crashDiskSize = 24 << 20

func crashExtraKey(id MapID) []byte { return append([]byte("c/test/"), id[:]...) }

// crashChild commits disk after disk; disk k is randomDisk(k), recorded in
// the same transaction as the map header.
func crashChild(dir string) {
	s, err := Open(dir, Options{BlockSize: 16 << 10})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	for k := uint64(1); ; k++ {
		p, err := s.Ingest(context.Background(), memSource{randomDisk(k, crashDiskSize)}, IngestOptions{
			Progress: func(done, total int64) { fmt.Printf("progress %d %d\n", k, done) },
		})
		if err != nil {
			fmt.Println("ingest:", err)
			os.Exit(2)
		}
		err = s.Commit(context.Background(), []*PendingMap{p}, func(txn *kv.Txn) error {
			return txn.Badger().Set(crashExtraKey(p.Info.ID), binary.BigEndian.AppendUint64(nil, k))
		})
		if err != nil {
			fmt.Println("commit:", err)
			os.Exit(2)
		}
		fmt.Printf("committed %d\n", k)
	}
}

func TestIngestKilledLeavesNoPartialBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	// As the crash matrix in cmd/csbs: 5, CI 10, make test-crash 20.
	kills := 5
	if n, err := strconv.Atoi(os.Getenv("CSBS_CRASH_KILLS")); err == nil && n > 0 {
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("CSBS_CRASH_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("crash seed %d (set CSBS_CRASH_SEED to replay), %d kills", seed, kills)
	r := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	committed := 0
	for round := range kills {
		// Kill after a random number of progress lines: mid-ingest, or
		// (when the count passes a commit) between ingest and commit.
		killAfter := 1 + r.IntN(60)
		out := runAndKill(t, dir, killAfter)
		committed += strings.Count(out, "committed ")
		maps := verifyCrashStore(t, dir)
		t.Logf("round %d: killed after %d lines; %d maps visible", round, killAfter, maps)
		if maps < committed {
			t.Fatalf("round %d: %d commits reported, only %d maps visible", round, committed, maps)
		}
	}
}

func runAndKill(t *testing.T, dir string, lines int) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CSBS_CRASH_CHILD_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen bytes.Buffer
	sc := bufio.NewScanner(stdout)
	for i := 0; i < lines && sc.Scan(); i++ {
		seen.WriteString(sc.Text() + "\n")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	for sc.Scan() { // drain what the child wrote before it died
		seen.WriteString(sc.Text() + "\n")
	}
	_ = cmd.Wait()
	if strings.Contains(seen.String(), "open:") || strings.Contains(seen.String(), "ingest:") || strings.Contains(seen.String(), "commit:") {
		t.Fatalf("child failed before the kill:\n%s", seen.String())
	}
	return seen.String()
}

// verifyCrashStore reopens the store after a kill: every visible map must
// have its commit record and read back exactly; every record a map.
func verifyCrashStore(t *testing.T, dir string) int {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("store does not open after kill: %v", err)
	}
	defer s.Close()
	maps, err := s.ListMaps()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		var k uint64
		err := s.db.View(func(txn *badger.Txn) error {
			v, err := getValue(txn, crashExtraKey(m.ID))
			if err != nil {
				return err
			}
			k = binary.BigEndian.Uint64(v)
			return nil
		})
		if err != nil {
			t.Fatalf("map %s visible without its commit record: %v", m.ID, err)
		}
		if got := readAll(t, s, m.ID); !bytes.Equal(got, randomDisk(k, crashDiskSize)) {
			t.Fatalf("map %s (disk %d) reads back wrong after kill", m.ID, k)
		}
	}
	records := 0
	_ = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("c/test/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			records++
		}
		return nil
	})
	if records != len(maps) {
		t.Fatalf("%d commit records but %d maps", records, len(maps))
	}
	return len(maps)
}
