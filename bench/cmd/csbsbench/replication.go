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
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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

// startReplication queues `backup replicate` and returns the job id.
func (a *appliance) startReplication(backup, remote string, extra ...string) string {
	_, out := a.cli(append([]string{"backup", "replicate", backup, "--remote", remote, "--json"}, extra...)...)
	var j struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &j); err != nil {
		log.Fatalf("backup replicate: %v %s", err, out)
	}
	return j.ID
}

// replicate runs `backup replicate` from remote src, waits for it and
// returns its wall time and the job.
func (a *appliance) replicate(backup string, extra ...string) (time.Duration, replJob) {
	start := time.Now()
	id := a.startReplication(backup, "src", extra...)
	a.cli("job", "wait", id)
	d := time.Since(start)
	_, out := a.cli("job", "show", id, "--json")
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

	// --rate: a fresh copy of the first backup into an empty store,
	// through a proxy that counts the bytes on the wire; the rate is
	// read over 10 s once the transfer runs (the job's setup and commit
	// are not transfer), then the job is canceled. The limit is well
	// below what the loopback copy reaches here (~60 MB/s on the wire on
	// 2 shared cores), so that it, not the CPU, decides.
	dst.cli("backup", "rm", "first")
	dst.cli("backup", "rm", "second")
	dst.cli("gc")
	proxy := startCountingProxy(addr)
	defer proxy.close()
	dst.cli("remote", "add", "viaproxy", "--url", "https://"+proxy.addr, "--token-file", tokFile, "--fingerprint", fp)
	const limit = 16 << 20
	job := dst.startReplication("first", "viaproxy", "--rate", "16MiB/s")
	for proxy.down.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	t0, d0 := time.Now(), proxy.down.Load()
	time.Sleep(10 * time.Second)
	achieved := float64(proxy.down.Load()-d0) / time.Since(t0).Seconds()
	dst.cli("job", "cancel", job)

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
	add("--rate 16MiB/s: bytes on the wire per second, over 10 s of transfer", "MiB/s", achieved/(1<<20), float64(limit)/(1<<20), "the limit", true, "0.9–1.1×")
	log.Printf("replication: first %s, incremental %s (%s); restic copy %s, %s; at --rate 16MiB/s: %.1f MiB/s on the wire",
		dFirst, dIncr, incr.Note, rFirst, rIncr, achieved/(1<<20))
}

// jsonPart drops the progress lines the CLI writes to stderr before its
// JSON (run returns both).
func jsonPart(out string) string {
	if i := strings.IndexAny(out, "{["); i >= 0 {
		return out[i:]
	}
	return out
}

// countingProxy relays TCP connections to a target and counts the bytes
// sent to its clients. Its sockets towards the clients have small send
// buffers, so the count is what the client's side accepted, as on a
// wire, not what waits in the proxy's kernel buffers.
type countingProxy struct {
	addr string
	l    net.Listener
	down atomic.Int64
}

func startCountingProxy(target string) *countingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	p := &countingProxy{addr: l.Addr().String(), l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				c.(*net.TCPConn).SetWriteBuffer(64 << 10)
				go io.Copy(s, c)
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						p.down.Add(int64(n))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *countingProxy) close() { p.l.Close() }
