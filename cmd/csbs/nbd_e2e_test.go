package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testdisk"
	"csbs/internal/testenv"
)

type exportJSON struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	URI      string `json:"uri"`
	ReadOnly bool   `json:"read_only"`
}

func TestNBDSourceAttachAndCommonRefused(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "qemu-nbd", "nbdcopy", "qemu-img", "nbdinfo")
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 48, 16, 21)

	// The disk source is a qemu-nbd export of the image, as of a running VM.
	qsock := filepath.Join(a.dir, "qemu-nbd.sock")
	q := exec.Command("qemu-nbd", "--read-only", "--format=raw", "--persistent", "--shared=4", "--socket="+qsock, img)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	testenv.WaitListening(t, qsock)
	a.ok("server", "add", "--name", "vm1", "--disk", "vda=nbd+unix:///?socket="+qsock)
	var common idName
	a.okJSON(&common, "backup", "create", "vm1", "--wait")
	a.fails(nil, "is Common", "backup", "attach", common.Name)
	a.fails(nil, "is Common", "restore", "start", common.Name, "--instant", "--disk", "vda="+a.dir+"/x.img")

	var b idName
	a.okJSON(&b, "backup", "create", "vm1", "--full", "--enable-instant-restore", "--wait")
	var es []exportJSON
	a.okJSON(&es, "backup", "attach", b.Name)
	if len(es) != 1 || !es[0].ReadOnly || !strings.HasPrefix(es[0].URI, "nbd+unix:///") {
		t.Fatalf("attach: %+v", es)
	}
	a.okJSON(&es, "export", "ls")
	if len(es) != 1 {
		t.Fatalf("export ls: %+v", es)
	}
	out, err := exec.Command("nbdinfo", "--size", es[0].URI).CombinedOutput()
	if fi, _ := os.Stat(img); err != nil || strings.TrimSpace(string(out)) != jsonNumber(fi.Size()) {
		t.Fatalf("nbdinfo --size: %v %s", err, out)
	}
	copy := filepath.Join(a.dir, "copy.img")
	if out, err := exec.Command("nbdcopy", es[0].URI, copy).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v %s", err, out)
	}
	if testdisk.SHA256(t, copy) != testdisk.SHA256(t, img) {
		t.Fatal("backup of an NBD source, exported again, differs from the image")
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, es[0].URI).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v %s", err, out)
	}
	// An attached backup cannot be deleted; detach frees it.
	a.fails(nil, "is in use by a restore, an NBD export or a FUSE mount", "backup", "rm", b.Name)
	a.ok("backup", "detach", b.Name)
	a.okJSON(&es, "export", "ls")
	if len(es) != 0 {
		t.Fatalf("export after detach: %+v", es)
	}
	a.ok("backup", "rm", b.Name)
}

func jsonNumber(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

type restoreJSON struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Done    int64  `json:"bytes_done"`
	Total   int64  `json:"bytes_total"`
	Targets []struct {
		Export string `json:"export"`
	} `json:"targets"`
}

// TestInstantRestoreSurvivesKill writes through the instant-restore export
// while hydration runs, kills the daemon with SIGKILL, restarts it, and
// expects hydration to resume and the target to equal backup + writes.
func TestInstantRestoreSurvivesKill(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "qemu-io")
	a := startAppliance(t, "")
	img := testdisk.Ext4(t, a.dir, 32, 20, 22)
	a.ok("server", "add", "--name", "web1", "--disk", "vda="+img)
	var b idName
	a.okJSON(&b, "backup", "create", "web1", "--full", "--enable-instant-restore", "--wait")

	target := filepath.Join(a.dir, "ir.img")
	var r restoreJSON
	a.okJSON(&r, "restore", "start", b.Name, "--instant", "--rate", "2MiB/s", "--disk", "vda="+target)
	if r.State != "running" || len(r.Targets) != 1 {
		t.Fatalf("instant restore: %+v", r)
	}
	var es []exportJSON
	a.okJSON(&es, "export", "ls")
	if len(es) != 1 || es[0].Kind != "instant" || es[0].ReadOnly {
		t.Fatalf("instant export: %+v", es)
	}
	expect, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Unaligned writes, some across block boundaries, some at the end.
	writes := []struct {
		off, n int
		pat    byte
	}{{1000, 70000, 0x5a}, {5<<20 - 7, 131073, 0xa5}, {20<<20 + 65535, 2, 0x11}, {len(expect) - 4097, 4097, 0x3c}}
	args := []string{"-f", "raw"}
	for _, w := range writes {
		args = append(args, "-c", "write -P "+jsonNumber(int64(w.pat))+" "+jsonNumber(int64(w.off))+" "+jsonNumber(int64(w.n)))
		for i := w.off; i < w.off+w.n; i++ {
			expect[i] = w.pat
		}
	}
	out, err := exec.Command("qemu-io", append(args, es[0].URI)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	// Reads through the export see the writes and the backup around them.
	check := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 1000 70000", "-c", "read -P 0x11 "+jsonNumber(20<<20+65535)+" 2", es[0].URI)
	if out, err := check.CombinedOutput(); err != nil || strings.Contains(string(out), "verification failed") {
		t.Fatalf("read back through export: %v\n%s", err, out)
	}
	a.okJSON(&r, "restore", "show", r.ID)
	if r.Done >= r.Total {
		t.Fatalf("hydration already complete before the kill (%d of %d); lower the rate", r.Done, r.Total)
	}

	// kill -9 mid-hydration, after the writes were acknowledged.
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	a.cmd = nil
	a.start()
	a.okJSON(&r, "restore", "show", r.ID)
	if r.State != "running" {
		t.Fatalf("after restart: %+v", r)
	}
	a.okJSON(&es, "export", "ls")
	if len(es) != 1 || es[0].Kind != "instant" {
		t.Fatalf("export not back after restart: %+v", es)
	}
	deadline := time.Now().Add(60 * time.Second)
	for r.State != "complete" {
		if time.Now().After(deadline) {
			t.Fatalf("hydration did not complete: %+v", r)
		}
		time.Sleep(200 * time.Millisecond)
		a.okJSON(&r, "restore", "show", r.ID)
	}
	a.okJSON(&r, "restore", "finish", r.ID)
	if r.State != "succeeded" {
		t.Fatalf("finish: %+v", r)
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, expect) {
		for i := range got {
			if got[i] != expect[i] {
				t.Fatalf("target differs from backup + writes first at offset %d", i)
			}
		}
	}
	a.okJSON(&es, "export", "ls")
	if len(es) != 0 {
		t.Fatalf("exports after finish: %+v", es)
	}
}

// TestNBDOverTCPNeedsTheSecretName serves NBD on loopback TCP: export
// names then carry a secret part, the bare name opens nothing, listing is
// refused, and the name stays the same across a restart.
func TestNBDOverTCPNeedsTheSecretName(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "nbdinfo")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	a := startAppliance(t, "[nbd]\ntcp_listen = \""+addr+"\"\n")
	img := testdisk.Sparse(t, a.dir, 4<<20, 77, 0)
	a.ok("server", "add", "--name", "vm1", "--disk", "vda="+img)
	var b idName
	a.okJSON(&b, "backup", "create", "vm1", "--full", "--enable-instant-restore", "--wait")
	var es []struct {
		exportJSON
		TCPURI string `json:"tcp_uri"`
	}
	a.okJSON(&es, "backup", "attach", b.Name)
	bare := b.ID + "-vda"
	if len(es) != 1 || !strings.HasPrefix(es[0].Name, bare+"-") || len(es[0].Name) < len(bare)+20 || es[0].TCPURI != "nbd://"+addr+"/"+es[0].Name {
		t.Fatalf("attach over TCP: %+v", es)
	}
	size := func(uri string) (string, error) {
		out, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if got, err := size(es[0].TCPURI); err != nil || got != jsonNumber(4<<20) {
		t.Fatalf("nbdinfo with the secret name: %v %s", err, got)
	}
	if got, err := size("nbd://" + addr + "/" + bare); err == nil {
		t.Fatalf("the bare export name opened the export: %s", got)
	}
	if out, err := exec.Command("nbdinfo", "--list", "nbd://"+addr).CombinedOutput(); err == nil && strings.Contains(string(out), bare) {
		t.Fatalf("nbdinfo --list shows the export over TCP: %s", out)
	}
	name := es[0].Name
	a.stop()
	a.start()
	a.okJSON(&es, "export", "ls")
	if len(es) != 1 || es[0].Name != name {
		t.Fatalf("export name after restart: %+v, want %s", es, name)
	}
	if got, err := size(es[0].TCPURI); err != nil || got != jsonNumber(4<<20) {
		t.Fatalf("nbdinfo after restart: %v %s", err, got)
	}
}
