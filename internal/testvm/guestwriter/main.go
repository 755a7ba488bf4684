// Command guestwriter runs inside the test guest (package testvm). It
// appends numbered, checksummed records to a file and fsyncs after each
// one, printing "csbs-writer synced N" to the console once record N is
// durable, and every few records it overwrites a random chunk of a
// second file, so that a disk under backup keeps changing in two ways:
// an append-only log whose every prefix can be verified, and scattered
// overwrites.
//
// Record format (512 bytes): "CSBR", seq (uint64 LE), payload derived
// from seq, CRC-32 (IEEE) of the first 508 bytes. testvm.VerifyRecords
// checks a file of them.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"time"
)

const recordSize = 512

func record(seq uint64) []byte {
	b := make([]byte, recordSize)
	copy(b, "CSBR")
	binary.LittleEndian.PutUint64(b[4:], seq)
	x := seq*0x9e3779b97f4a7c15 + 1
	for i := 12; i < recordSize-4; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	binary.LittleEndian.PutUint32(b[recordSize-4:], crc32.ChecksumIEEE(b[:recordSize-4]))
	return b
}

func valid(b []byte, seq uint64) bool {
	return string(b[:4]) == "CSBR" && binary.LittleEndian.Uint64(b[4:]) == seq &&
		binary.LittleEndian.Uint32(b[recordSize-4:]) == crc32.ChecksumIEEE(b[:recordSize-4])
}

func main() {
	path := flag.String("records", "/data/records", "append-only record file")
	blob := flag.String("blob", "/data/blob", "file whose chunks are overwritten")
	blobMiB := flag.Int("blob-mib", 8, "size of the blob file")
	rate := flag.Int("rate", 50, "records per second (0: as fast as fsync allows)")
	every := flag.Int("overwrite-every", 10, "overwrite one 64 KiB blob chunk every N records (0: never)")
	flag.Parse()
	if err := run(*path, *blob, *blobMiB, *rate, *every); err != nil {
		fmt.Fprintf(os.Stderr, "csbs-writer: %v\n", err)
		os.Exit(1)
	}
}

func run(path, blob string, blobMiB, rate, every int) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	// Continue after the last whole, valid record (a restarted guest).
	var seq uint64
	buf := make([]byte, recordSize)
	for {
		if _, err := f.ReadAt(buf, int64(seq)*recordSize); err != nil || !valid(buf, seq) {
			break
		}
		seq++
	}
	if err := f.Truncate(int64(seq) * recordSize); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	bf, err := os.OpenFile(blob, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	chunks := blobMiB * 16
	if fi, err := bf.Stat(); err == nil && fi.Size() < int64(blobMiB)<<20 {
		chunk := make([]byte, 64<<10)
		for i := 0; i < chunks; i++ {
			fillChunk(chunk, uint64(i))
			if _, err := bf.WriteAt(chunk, int64(i)<<16); err != nil {
				return err
			}
		}
		if err := bf.Sync(); err != nil {
			return err
		}
	}
	fmt.Printf("csbs-writer started at %d\n", seq)
	r := rand.New(rand.NewPCG(seq, 99))
	chunk := make([]byte, 64<<10)
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		tick = t.C
	}
	for {
		if tick != nil {
			<-tick
		}
		if _, err := f.Write(record(seq)); err != nil {
			return fmt.Errorf("write record %d: %w", seq, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync after record %d: %w", seq, err)
		}
		fmt.Printf("csbs-writer synced %d\n", seq)
		if every > 0 && seq%uint64(every) == 0 && chunks > 0 {
			fillChunk(chunk, r.Uint64())
			if _, err := bf.WriteAt(chunk, int64(r.IntN(chunks))<<16); err != nil {
				return err
			}
			if err := bf.Sync(); err != nil {
				return err
			}
		}
		seq++
	}
}

func fillChunk(b []byte, seed uint64) {
	x := seed | 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
}
