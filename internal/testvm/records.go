package testvm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RecordSize is the size of one writer record.
const RecordSize = 512

// VerifyRecords checks that data is a whole number of valid records
// numbered 0, 1, 2, ... (no gap, no torn or foreign record) and returns
// how many there are.
func VerifyRecords(data []byte) (int64, error) {
	if len(data)%RecordSize != 0 {
		return 0, fmt.Errorf("record file is %d bytes, not a whole number of %d-byte records (torn record)", len(data), RecordSize)
	}
	n := int64(len(data) / RecordSize)
	for i := int64(0); i < n; i++ {
		b := data[i*RecordSize : (i+1)*RecordSize]
		if string(b[:4]) != "CSBR" {
			return i, fmt.Errorf("record %d: bad magic %q", i, b[:4])
		}
		if seq := binary.LittleEndian.Uint64(b[4:]); seq != uint64(i) {
			return i, fmt.Errorf("record %d: holds sequence number %d", i, seq)
		}
		if binary.LittleEndian.Uint32(b[RecordSize-4:]) != crc32.ChecksumIEEE(b[:RecordSize-4]) {
			return i, fmt.Errorf("record %d: checksum mismatch (torn record)", i)
		}
	}
	return n, nil
}

// CheckImage checks a restored raw image of the guest's data disk: e2fsck
// finds it clean (after replaying the journal unless clean is set: a
// frozen file system needs no replay), and /records holds a valid prefix
// of the writer's sequence of at least atLeast records (those reported
// durable before the backup began) and at most atMost (-1: no bound). It
// returns the number of records.
func CheckImage(t testing.TB, img string, clean bool, atLeast, atMost int64) int64 {
	t.Helper()
	if !clean {
		// Replays the journal, as a mount after a crash would; fixes
		// nothing else: a second, read-only pass must find no error.
		out, err := exec.Command("e2fsck", "-f", "-y", img).CombinedOutput()
		if err != nil {
			var ee *exec.ExitError
			if !asExit(err, &ee) || ee.ExitCode() > 1 {
				t.Fatalf("e2fsck -fy %s: %v\n%s", img, err, out)
			}
		}
	}
	if out, err := exec.Command("e2fsck", "-f", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s (clean=%v): %v\n%s", img, clean, err, out)
	}
	dump := filepath.Join(t.TempDir(), "records")
	if out, err := exec.Command("debugfs", "-R", "dump /records "+dump, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs dump /records: %v\n%s", err, out)
	}
	data, err := os.ReadFile(dump)
	if err != nil {
		t.Fatalf("records not dumped from %s: %v", img, err)
	}
	n, err := VerifyRecords(data)
	if err != nil {
		t.Fatalf("%s: %v", img, err)
	}
	if n < atLeast+1 {
		t.Fatalf("%s holds records 0..%d, but record %d was durable before the backup began", img, n-1, atLeast)
	}
	if atMost >= 0 && n > atMost+1 {
		t.Fatalf("%s holds records 0..%d, but the writer had reported only up to %d when the backup's point in time was fixed", img, n-1, atMost)
	}
	return n
}

func asExit(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}
