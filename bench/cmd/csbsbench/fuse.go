package main

import (
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func dropCaches() {
	exec.Command("sync").Run()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

func readFile(path string) float64 {
	d, _ := run("sh", "-c", "cat '"+path+"' > /dev/null")
	fi, err := os.Stat(path)
	if err != nil {
		log.Fatal(err)
	}
	return mbps(fi.Size(), d)
}

func fioFileIOPS(path string) float64 {
	_, out := run("fio", "--name=r", "--ioengine=psync", "--filename="+path, "--rw=randread", "--bs=4k",
		"--runtime=8", "--time_based", "--readonly", "--output-format=json")
	return parseFioIOPS(out)
}

// fuseFigures compares our FUSE mount of a backup with restic mount of the
// same image, in the same run.
func (b *bench) fuseFigures(a *appliance, dir string) {
	mnt := filepath.Join(dir, "fuse")
	a.cli("mount", mnt)
	defer a.cli("umount", mnt)
	ours := filepath.Join(mnt, "default", "img", "golden", "vda.img")

	repo := filepath.Join(dir, "restic-fuse")
	os.Setenv("RESTIC_PASSWORD", "bench")
	os.Setenv("RESTIC_REPOSITORY", repo)
	run("restic", "init", "--repository-version", "2")
	run("restic", "backup", b.image)
	rmnt := filepath.Join(dir, "restic-mnt")
	os.MkdirAll(rmnt, 0o755)
	rm := exec.Command("restic", "mount", rmnt)
	if err := rm.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		exec.Command("umount", rmnt).Run()
		rm.Process.Kill()
		rm.Wait()
	}()
	peer := filepath.Join(rmnt, "snapshots", "latest", b.image)
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(peer); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	add := func(name, unit string, o, p float64) {
		f := b.fig("fuse", name, unit, "restic mount", true, "≥ 3×")
		f.ours = append(f.ours, o)
		f.peer = append(f.peer, p)
	}
	// Each side reads cold (store files out of the page cache), then warm
	// (its store files cached) before the other side drops the caches.
	dropCaches()
	cold := readFile(ours)
	warm := readFile(ours)
	dropCaches()
	coldPeer := readFile(peer)
	warmPeer := readFile(peer)
	add("sequential read of the image, cold", "MB/s", cold, coldPeer)
	add("sequential read of the image, warm", "MB/s", warm, warmPeer)
	add("random 4 KiB read (fio psync)", "IOPS", fioFileIOPS(ours), fioFileIOPS(peer))
}

func parseFioIOPS(out string) float64 {
	i := strings.Index(out, `"iops" :`)
	if i < 0 {
		log.Fatalf("fio output without iops:\n%s", out)
	}
	rest := strings.TrimSpace(out[i+len(`"iops" :`):])
	end := strings.IndexAny(rest, ",\n")
	v, err := strconv.ParseFloat(strings.TrimSpace(rest[:end]), 64)
	if err != nil {
		log.Fatalf("fio iops %q: %v", rest[:end], err)
	}
	return v
}
