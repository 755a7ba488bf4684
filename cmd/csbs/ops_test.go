package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"csbs/config"
	"csbs/internal/testenv"
)

// TestBashCompletion runs the generated bash script with the real binary.
func TestBashCompletion(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "bash")
	script := `source <("$CSBS" completion bash)
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _csbs; echo "${COMPREPLY[*]}"; }
complete_words csbs back
complete_words csbs backup cr
complete_words csbs backup create --enable
complete_words csbs restore st
`
	cmd := exec.Command("bash", "-c", strings.ReplaceAll(script, "csbs ", filepath.Base(binary)+" "))
	cmd.Env = append(os.Environ(), "CSBS="+binary, "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	want := "backup\ncreate\n--enable-instant-restore\nstart\n"
	if string(out) != want {
		t.Fatalf("completions:\n%s\nwant:\n%s", out, want)
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		zsh, _ := exec.Command(binary, "completion", "zsh").Output()
		if out, err := exec.Command("zsh", "-n", "-c", string(zsh)).CombinedOutput(); err != nil {
			t.Fatalf("zsh script does not parse: %v\n%s", err, out)
		}
	}
	if out, err := exec.Command(binary, "completion", "fish").CombinedOutput(); err == nil || !strings.Contains(string(out), "want bash or zsh") {
		t.Fatalf("completion fish: %v %s", err, out)
	}
}

// TestMakeInstall stages make install into a temp DESTDIR and checks what
// lands there: the binary runs, the unit starts the installed binary with
// the installed config, and that config parses with its data in
// /var/lib/csbs.
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	testenv.NeedTools(t, "make", "sed", "install")
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", "../..", "install-files", "DESTDIR="+dest, "BIN="+binary).CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	if v, err := exec.Command(filepath.Join(dest, "usr/local/bin/csbs"), "version").Output(); err != nil || !strings.HasPrefix(string(v), "csbs ") {
		t.Fatalf("installed binary: %v %s", err, v)
	}
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/csbs.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/local/bin/csbs serve --config /etc/csbs/csbs.toml", "Type=notify", "Restart=on-failure"} {
		if !strings.Contains(string(unit), want) {
			t.Fatalf("unit lacks %q", want)
		}
	}
	cfg, err := config.Load(filepath.Join(dest, "etc/csbs/csbs.toml"))
	if err != nil {
		t.Fatalf("installed config: %v", err)
	}
	if cfg.DataDir != "/var/lib/csbs" {
		t.Fatalf("installed config data_dir %q", cfg.DataDir)
	}
	for _, f := range []string{"usr/share/bash-completion/completions/csbs", "usr/share/zsh/vendor-completions/_csbs", "usr/local/share/doc/csbs/README.md"} {
		if fi, err := os.Stat(filepath.Join(dest, f)); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	// A second install keeps the operator's config.
	os.WriteFile(filepath.Join(dest, "etc/csbs/csbs.toml"), []byte("region = \"mine\"\n"), 0o644)
	if out, err := exec.Command("make", "-C", "../..", "install-files", "DESTDIR="+dest, "BIN="+binary).CombinedOutput(); err != nil || !strings.Contains(string(out), "keeping") {
		t.Fatalf("second make install: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "etc/csbs/csbs.toml")); string(b) != "region = \"mine\"\n" {
		t.Fatalf("make install overwrote the config: %s", b)
	}
}

// TestSystemdNotify checks that serve reports READY=1 on NOTIFY_SOCKET.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := listenUnixgram(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := &appliance{t: t, dir: dir, logs: &bytes.Buffer{}, env: []string{"CSBS_DATA_DIR=" + filepath.Join(dir, "data"), "NOTIFY_SOCKET=" + sock}}
	a.start()
	defer a.stop()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("notify: %v %q", err, buf[:n])
	}
}

func listenUnixgram(path string) (*net.UnixConn, error) {
	return net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
}
