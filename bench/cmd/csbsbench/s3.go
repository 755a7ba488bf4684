package main

import (
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"csbs/internal/radosgw"
)

// s3Figures measures the object-store backend on a local Ceph RADOS
// Gateway: backup, restore and hydration speed against the local backend
// of the same build (ratio s3/local) and against restic's s3 backend on
// the same gateway (ratio csbs/restic), the time to the first byte of an
// instant restore, and PUT requests per GiB written. The s3 appliance's
// pack cache is kept small (64 MiB) so that restores and hydration read
// the bucket, not a local copy.
func (b *bench) s3Figures(gw *radosgw.Cluster, rep int) {
	dir, err := os.MkdirTemp(b.work, "s3-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bucket := fmt.Sprintf("csbs-bench-%d", rep)
	if err := gw.MakeBucket(bucket); err != nil {
		log.Fatal(err)
	}
	creds, err := gw.WriteCredentials(dir)
	if err != nil {
		log.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.img")
	copyFile(disk, b.image)

	type result struct {
		backup, restore, hydrate, firstByte float64
		putsPerGiB                          float64
	}
	measure := func(name, extra string) result {
		adir := filepath.Join(dir, name)
		os.MkdirAll(adir, 0o700)
		a := b.startApplianceConf(adir, extra)
		defer a.stop()
		var r result
		a.cli("server", "add", "--name", "bench", "--disk", "vda="+disk)
		d, _ := a.cli("backup", "create", "bench", "--full", "--enable-instant-restore", "--wait", "--name", "golden")
		r.backup = mbps(b.size, d)
		_, out := a.cli("job", "ls", "--json")
		var jobs []struct {
			Kind    string `json:"kind"`
			StoreIO *struct {
				Puts     int64 `json:"puts"`
				PutBytes int64 `json:"put_bytes"`
			} `json:"store_io"`
		}
		if err := json.Unmarshal([]byte(out), &jobs); err != nil || len(jobs) == 0 || jobs[0].StoreIO == nil {
			log.Fatalf("job ls: %v %s", err, out)
		}
		io := jobs[0].StoreIO
		r.putsPerGiB = float64(io.Puts) / (float64(io.PutBytes) / (1 << 30))
		target := filepath.Join(adir, "restored.img")
		d, _ = a.cli("restore", "start", "golden", "--disk", "vda="+target, "--wait")
		r.restore = mbps(b.size, d)
		if x, y := sum(target), sum(b.image); x != y {
			log.Fatalf("%s restore differs from the image", name)
		}
		os.Remove(target)
		r.firstByte = float64(a.firstByte("golden", filepath.Join(adir, "ttfb.img")).Microseconds()) / 1000
		target = filepath.Join(adir, "hydrated.img")
		start := time.Now()
		_, out = a.cli("restore", "start", "golden", "--instant", "--rate", "0", "--json", "--disk", "vda="+target)
		var rs struct {
			ID string `json:"id"`
		}
		json.Unmarshal([]byte(out), &rs)
		for {
			_, out := a.cli("restore", "show", rs.ID, "--json")
			if strings.Contains(out, `"state": "complete"`) {
				break
			}
			if strings.Contains(out, `"state": "failed"`) {
				log.Fatalf("%s hydration failed: %s", name, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
		r.hydrate = mbps(b.size, time.Since(start))
		a.cli("restore", "finish", rs.ID)
		if x, y := sum(target), sum(b.image); x != y {
			log.Fatalf("%s hydrated target differs from the image", name)
		}
		os.Remove(target)
		return r
	}
	s3 := measure("s3", fmt.Sprintf("backend = \"s3\"\n[store.s3]\nendpoint = %q\nbucket = %q\ncredentials_file = %q\npack_size = \"16MiB\"\ncache_size = \"64MiB\"\n", gw.Endpoint, bucket, creds))
	local := measure("local", "")

	// restic with its s3 backend on the same gateway.
	os.Setenv("RESTIC_PASSWORD", "bench")
	os.Setenv("RESTIC_REPOSITORY", fmt.Sprintf("s3:%s/restic-bench-%d", gw.Endpoint, rep))
	os.Setenv("AWS_ACCESS_KEY_ID", gw.AccessKey)
	os.Setenv("AWS_SECRET_ACCESS_KEY", gw.SecretKey)
	run("restic", "init")
	d, _ := run("restic", "backup", disk)
	resticBackup := mbps(b.size, d)
	rdir := filepath.Join(dir, "restic-out")
	d, _ = run("restic", "restore", "latest", "--target", rdir)
	resticRestore := mbps(b.size, d)
	os.RemoveAll(rdir)

	add := func(name, unit, peer string, ours, other float64, higher bool, target string) {
		f := b.fig("s3", name, unit, peer, higher, target)
		f.ours = append(f.ours, ours)
		if peer != "" {
			f.peer = append(f.peer, other)
		}
	}
	add("backup of new data, s3 backend", "MB/s", "restic s3", s3.backup, resticBackup, true, "≥ 2×")
	add("restore, s3 backend", "MB/s", "restic s3", s3.restore, resticRestore, true, "≥ 1.5×")
	add("backup of new data, s3 vs local backend", "MB/s", "csbs local", s3.backup, local.backup, true, "-")
	add("restore, s3 vs local backend", "MB/s", "csbs local", s3.restore, local.restore, true, "-")
	add("hydration (unlimited), s3 vs local backend", "MB/s", "csbs local", s3.hydrate, local.hydrate, true, "-")
	add("instant restore: start to first byte, s3 vs local", "ms", "csbs local", s3.firstByte, local.firstByte, false, "-")
	add("PUT requests per GiB written, 16 MiB packs", "PUTs", "", s3.putsPerGiB, 0, false, "≤ 80")
}

// startApplianceConf starts a daemon in dir with extra lines in [store].
func (b *bench) startApplianceConf(dir, storeExtra string) *appliance {
	a := &appliance{b: b, dir: dir, cfg: filepath.Join(dir, "csbs.toml")}
	conf := "data_dir = \"csbs\"\n[log]\nlevel = \"warn\"\n[store]\ncompression = \"" + b.codec + "\"\n" + storeExtra
	os.WriteFile(a.cfg, []byte(conf), 0o600)
	a.daemon = exec.Command(b.csbs, "serve", "--config", a.cfg)
	a.daemon.Stderr = os.Stderr
	a.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := a.daemon.Start(); err != nil {
		log.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		if exec.Command(b.csbs, "--config", a.cfg, "status").Run() == nil {
			return a
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("daemon in %s did not start", dir)
	return nil
}
