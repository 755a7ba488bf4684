package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and returns the files
// and the SHA-256 of its DER bytes.
func selfSigned(dir string) (cert, key, fingerprint string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "csbs-bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		log.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		log.Fatal(err)
	}
	cert, key = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	sum := sha256.Sum256(der)
	return cert, key, hex.EncodeToString(sum[:])
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type replJob struct {
	State     string    `json:"state"`
	Error     string    `json:"error"`
	Started   time.Time `json:"started"`
	Ended     time.Time `json:"ended"`
	Note      string    `json:"note"`
	Replicate struct {
		BlocksFetched int64 `json:"blocks_fetched"`
		BlocksSkipped int64 `json:"blocks_skipped"`
		WireBytes     int64 `json:"wire_bytes"`
	} `json:"replicate"`
}

// replicate runs `backup replicate --wait` and returns its wall time and
// the job.
func (a *appliance) replicate(backup string, extra ...string) (time.Duration, replJob) {
	_, out := a.cli(append([]string{"backup", "replicate", backup, "--remote", "src", "--json"}, extra...)...)
	var j struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &j); err != nil {
		log.Fatalf("backup replicate: %v %s", err, out)
	}
	start := time.Now()
	a.cli("job", "wait", j.ID)
	d := time.Since(start)
	_, out = a.cli("job", "show", j.ID, "--json")
	var job replJob
	if err := json.Unmarshal([]byte(jsonPart(out)), &job); err != nil || job.State != "succeeded" {
		log.Fatalf("replication job: %v %s", err, out)
	}
	return d, job
}

// replication measures copying backups between two appliances over TLS
// on loopback (a first copy, then a 1%-changed incremental) beside
// `restic copy` between two local repositories of the same data, the
// bytes on the wire of the incremental, and how closely --rate holds.
func (b *bench) replication(changed string) {
	dir, err := os.MkdirTemp(b.work, "repl-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	disk := filepath.Join(dir, "disk.img")
	copyFile(disk, b.image)

	srcDir, dstDir := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.MkdirAll(srcDir, 0o700)
	os.MkdirAll(dstDir, 0o700)
	cert, key, fp := selfSigned(srcDir)
	addr := freePort()
	src := b.startApplianceConf(srcDir, fmt.Sprintf("[api]\ntcp_listen = %q\ntls_cert = %q\ntls_key = %q\n", addr, cert, key))
	defer src.stop()
	dst := b.startApplianceConf(dstDir, "")
	defer dst.stop()
	src.cli("server", "add", "--name", "bench", "--disk", "vda="+disk)
	src.cli("backup", "create", "bench", "--wait", "--name", "first")
	copyFile(disk, changed)
	_, out := src.cli("backup", "create", "bench", "--wait", "--name", "second", "--json")
	var second struct {
		Disks []struct {
			NewBytes int64 `json:"new_bytes"`
		} `json:"disks"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &second); err != nil {
		log.Fatalf("backup create: %v %s", err, out)
	}
	_, tok := src.cli("token", "create", "--replication", "--quiet")
	tokFile := filepath.Join(dstDir, "src.token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	dst.cli("remote", "add", "src", "--url", "https://"+addr, "--token-file", tokFile, "--fingerprint", fp)

	dFirst, _ := dst.replicate("first")
	dIncr, incr := dst.replicate("second")
	target := filepath.Join(dir, "restored.img")
	dst.cli("restore", "start", "second", "--disk", "vda="+target, "--wait")
	if a, c := sum(target), sum(changed); a != c {
		log.Fatalf("the replica restores different bytes: %s %s", a, c)
	}
	os.Remove(target)

	// --rate: a fresh copy of the first backup into an empty store.
	dst.cli("backup", "rm", "first")
	dst.cli("backup", "rm", "second")
	dst.cli("gc")
	// Well below what the loopback copy reaches here (~60 MB/s on the
	// wire on 2 shared cores), so that the limit, not the CPU, decides.
	const limit = 20 << 20
	_, limited := dst.replicate("first", "--rate", "20MiB/s")
	achieved := float64(limited.Replicate.WireBytes) / limited.Ended.Sub(limited.Started).Seconds()

	// restic: the same two versions in one repository, copied into a
	// second one, first the older snapshot, then the newer.
	repo1, repo2 := filepath.Join(dir, "restic1"), filepath.Join(dir, "restic2")
	os.Setenv("RESTIC_PASSWORD", "bench")
	os.Setenv("RESTIC_FROM_PASSWORD", "bench")
	copyFile(disk, b.image)
	run("restic", "-r", repo1, "init", "--repository-version", "2")
	run("restic", "-r", repo1, "backup", "--tag", "first", disk)
	copyFile(disk, changed)
	run("restic", "-r", repo1, "backup", "--tag", "second", disk)
	run("restic", "-r", repo2, "init", "--repository-version", "2", "--from-repo", repo1, "--copy-chunker-params")
	rFirst, _ := run("restic", "-r", repo2, "copy", "--from-repo", repo1, "--tag", "first")
	rIncr, _ := run("restic", "-r", repo2, "copy", "--from-repo", repo1, "--tag", "second")

	add := func(name, unit string, ours, peer float64, peerName string, higher bool, target string) {
		f := b.fig("replication", name, unit, peerName, higher, target)
		f.ours = append(f.ours, ours)
		if peerName != "" {
			f.peer = append(f.peer, peer)
		}
	}
	add("first copy (loopback, TLS; image MB/s)", "MB/s", mbps(b.size, dFirst), mbps(b.size, rFirst), "restic copy", true, "≥ 2×")
	add("incremental copy (1% changed; image MB/s)", "MB/s", mbps(b.size, dIncr), mbps(b.size, rIncr), "restic copy", true, "≥ 2×")
	add("incremental: bytes on the wire vs the changed blocks' stored bytes", "MiB", float64(incr.Replicate.WireBytes)/(1<<20),
		float64(second.Disks[0].NewBytes)/(1<<20), "changed data", false, "≤ 1.2×")
	add("--rate 20MiB/s: bytes on the wire per second of the job", "MiB/s", achieved/(1<<20), float64(limit)/(1<<20), "the limit", true, "0.9–1.1×")
	log.Printf("replication: first %s, incremental %s (%s); restic copy %s, %s; limited run %s",
		dFirst, dIncr, incr.Note, rFirst, rIncr, limited.Note)
}

// jsonPart drops the progress lines the CLI writes to stderr before its
// JSON (run returns both).
func jsonPart(out string) string {
	if i := strings.IndexAny(out, "{["); i >= 0 {
		return out[i:]
	}
	return out
}
