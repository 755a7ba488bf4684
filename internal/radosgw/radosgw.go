// Package radosgw starts a throw-away single-node Ceph cluster with a
// RADOS Gateway for tests: one monitor on 127.0.0.1, one OSD on memstore
// (data in memory), pools of size 1 and 8 PGs with the autoscaler off,
// authentication off (with the ms_*_mode options on crc, or radosgw loops
// on auth errors). It serves S3 in about 12 s. Packages: radosgw,
// ceph-mon, ceph-osd (.ci/run installs them).
//
// Tests that need it call Start: it fails the test under CI (env CI set)
// when the cluster cannot start, and skips it elsewhere with the reason.
package radosgw

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Cluster is a running single-node cluster with a gateway.
type Cluster struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string

	conf    string
	rgwPort int

	mu   sync.Mutex
	mon  *exec.Cmd
	osd  *exec.Cmd
	rgw  *exec.Cmd
	logs map[string]*bytes.Buffer
}

// Start brings a cluster up in a temp dir and stops it when t ends.
// memBytes bounds the OSD's memstore (0: 2 GiB).
func Start(t testing.TB, memBytes int64) *Cluster {
	t.Helper()
	c, err := Launch(memBytes)
	if err != nil {
		unavailable(t, err.Error())
	}
	t.Cleanup(c.Close)
	return c
}

// Launch brings a cluster up in a new temp dir (for programs; tests use
// Start). Close stops it and removes the dir.
func Launch(memBytes int64) (*Cluster, error) {
	for _, bin := range []string{"ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not installed (apt-get install radosgw ceph-mon ceph-osd)", bin)
		}
	}
	dir, err := os.MkdirTemp("", "csbs-ceph-")
	if err != nil {
		return nil, err
	}
	c, err := start(dir, memBytes)
	if err != nil {
		if c != nil {
			err = fmt.Errorf("cannot start a Ceph cluster: %w\n%s", err, c.Logs())
			c.Stop()
		}
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// Close stops the cluster and removes its files.
func (c *Cluster) Close() {
	c.Stop()
	os.RemoveAll(c.Dir)
}

func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("radosgw: %s (CI must run the S3 tests; .ci/run installs radosgw ceph-mon ceph-osd)", why)
	}
	t.Skipf("skipping: radosgw: %s", why)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func start(dir string, memBytes int64) (*Cluster, error) {
	if memBytes <= 0 {
		memBytes = 2 << 30
	}
	monPort, err := freePort()
	if err != nil {
		return nil, err
	}
	rgwPort, err := freePort()
	if err != nil {
		return nil, err
	}
	fsid := fmt.Sprintf("%s-%s-%s-%s-%s", randomHex(4), randomHex(2), randomHex(2), randomHex(2), randomHex(6))
	for _, sub := range []string{"mon", "osd/osd.0", "run", "log", "rgw"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "ceph.conf")
	text := fmt.Sprintf(`[global]
fsid = %[1]s
mon host = v2:127.0.0.1:%[2]d
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = %[3]s/run
log file = %[3]s/log/$name.log
admin socket = %[3]s/run/$name.asok
keyring = %[3]s/keyring
[mon]
mon data = %[3]s/mon/$name
[osd]
osd objectstore = memstore
osd data = %[3]s/osd/$name
memstore device bytes = %[4]d
osd max object size = 268435456
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:%[5]d
rgw data = %[3]s/rgw
`, fsid, monPort, dir, memBytes, rgwPort)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "keyring"), nil, 0o600); err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, conf: conf, rgwPort: rgwPort, logs: map[string]*bytes.Buffer{},
		Endpoint: fmt.Sprintf("http://127.0.0.1:%d", rgwPort), AccessKey: "CSBS" + strings.ToUpper(randomHex(8)), SecretKey: randomHex(20)}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	monmap := filepath.Join(dir, "monmap")
	if err := c.run(ctx, "monmaptool", "--create", "--addv", "a", fmt.Sprintf("[v2:127.0.0.1:%d]", monPort), "--fsid", fsid, monmap); err != nil {
		return c, err
	}
	if err := c.run(ctx, "ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap); err != nil {
		return c, err
	}
	if c.mon, err = c.daemon("mon", "ceph-mon", "-c", conf, "-i", "a", "-f"); err != nil {
		return c, err
	}
	if err := c.run(ctx, "ceph", "-c", conf, "--connect-timeout", "30", "osd", "create"); err != nil {
		return c, err
	}
	if err := c.run(ctx, "ceph-osd", "-c", conf, "-i", "0", "--mkfs"); err != nil {
		return c, err
	}
	if c.osd, err = c.daemon("osd", "ceph-osd", "-c", conf, "-i", "0", "-f"); err != nil {
		return c, err
	}
	if err := c.StartGateway(ctx); err != nil {
		return c, err
	}
	if err := c.run(ctx, "radosgw-admin", "-c", conf, "-n", "client.admin", "user", "create", "--uid=csbs", "--display-name=csbs",
		"--access-key="+c.AccessKey, "--secret="+c.SecretKey); err != nil {
		return c, err
	}
	return c, nil
}

// run runs a setup command to the end.
func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// daemon starts a long-running process in the foreground mode.
func (c *Cluster) daemon(label, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	buf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	c.mu.Lock()
	c.logs[label] = buf
	c.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go cmd.Wait()
	return cmd, nil
}

// StartGateway starts radosgw and waits until it answers S3 requests.
func (c *Cluster) StartGateway(ctx context.Context) error {
	rgw, err := c.daemon("rgw", "radosgw", "-c", c.conf, "-n", "client.rgw.a", "-f")
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.rgw = rgw
	c.mu.Unlock()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(c.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("radosgw did not answer on %s: %w", c.Endpoint, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// KillGateway kills radosgw (SIGKILL): the endpoint stops answering.
func (c *Cluster) KillGateway() {
	c.mu.Lock()
	rgw := c.rgw
	c.rgw = nil
	c.mu.Unlock()
	if rgw != nil && rgw.Process != nil {
		rgw.Process.Kill()
		for i := 0; i < 100; i++ { // until the port is free
			if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.rgwPort), 100*time.Millisecond); err != nil {
				return
			} else {
				conn.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// Stop kills every daemon of the cluster.
func (c *Cluster) Stop() {
	c.KillGateway()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range []*exec.Cmd{c.osd, c.mon} {
		if p != nil && p.Process != nil {
			p.Process.Kill()
		}
	}
	c.osd, c.mon = nil, nil
}

// Logs returns the daemons' output and log files, for failure messages.
func (c *Cluster) Logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for name, buf := range c.logs {
		fmt.Fprintf(&b, "--- %s\n%s\n", name, lastLines(buf.String(), 20))
	}
	files, _ := filepath.Glob(filepath.Join(c.Dir, "log", "*.log"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(f), lastLines(string(data), 20))
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CredentialsFile writes the gateway user's keys as a csbs credentials
// file (mode 0600) in dir and returns its path.
func (c *Cluster) CredentialsFile(t testing.TB, dir string) string {
	t.Helper()
	p, err := c.WriteCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteCredentials is CredentialsFile for programs.
func (c *Cluster) WriteCredentials(dir string) (string, error) {
	p := filepath.Join(dir, "s3.credentials")
	body := fmt.Sprintf("access_key_id = %q\nsecret_access_key = %q\n", c.AccessKey, c.SecretKey)
	return p, os.WriteFile(p, []byte(body), 0o600)
}

// Client returns an S3 client with the gateway user's keys, for tests
// that look at or damage objects directly.
func (c *Cluster) Client() *s3.Client {
	return s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(c.Endpoint), UsePathStyle: true,
		Credentials:                aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, "")),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// CreateBucket creates a bucket owned by the gateway user.
func (c *Cluster) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := c.MakeBucket(name); err != nil {
		t.Fatal(err)
	}
}

// MakeBucket is CreateBucket for programs.
func (c *Cluster) MakeBucket(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}
