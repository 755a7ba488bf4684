package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"csbs/internal/testenv"
)

// codeBlocks returns the fenced blocks of md whose info string is info.
func codeBlocks(md, info string) []string {
	var out []string
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```"+info {
			continue
		}
		var b strings.Builder
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			b.WriteString(lines[i] + "\n")
		}
		out = append(out, b.String())
	}
	return out
}

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeConfigReference keeps the README's configuration reference
// identical to config.example.toml (which the config tests check against
// the parser's defaults).
func TestReadmeConfigReference(t *testing.T) {
	t.Parallel()
	blocks := codeBlocks(readme(t), "toml")
	example, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || blocks[0] != string(example) {
		t.Fatalf("README's toml block differs from config.example.toml (%d blocks); paste the file into the README", len(blocks))
	}
}

// TestReadmeExamples runs every block marked "sh runnable", in order,
// against a real daemon started as `make run` starts it (default config,
// data in ./var), in a fresh directory where ./csbs is the binary.
func TestReadmeExamples(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t, "the README's FUSE and browse steps")
	testenv.NeedTools(t, "bash", "nbdinfo", "qemu-img", "mkfs.ext4", "cmp", "losetup", "openssl")
	blocks := codeBlocks(readme(t), "sh runnable")
	if len(blocks) < 8 {
		t.Fatalf("found %d runnable blocks in README.md", len(blocks))
	}
	dir := t.TempDir()
	if err := os.Symlink(binary, filepath.Join(dir, "csbs")); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH") + ":/usr/sbin:/sbin", "HOME=" + dir, "TMPDIR=" + os.TempDir()}
	var logs syncBuffer // written by the daemon's output copier while the test reads it
	daemon := exec.Command("./csbs", "serve")
	daemon.Dir, daemon.Env, daemon.Stdout, daemon.Stderr = dir, env, &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		daemon.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- daemon.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			daemon.Process.Kill()
			return <-done
		}
	}
	defer func() {
		// A failed block may leave mounts behind: undo them before the
		// temp dir goes.
		for _, m := range []string{"demo/files", "demo/mnt"} {
			syscall.Unmount(filepath.Join(dir, m), syscall.MNT_DETACH)
		}
		stop()
	}()
	ready := false
	for i := 0; i < 400 && !ready; i++ {
		cmd := exec.Command("./csbs", "status")
		cmd.Dir, cmd.Env = dir, env
		ready = cmd.Run() == nil
		time.Sleep(25 * time.Millisecond)
	}
	if !ready {
		t.Fatalf("daemon did not start:\n%s", logs.String())
	}
	for i, block := range blocks {
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README block %d failed: %v\n--- block\n%s--- output\n%s--- daemon log\n%s", i+1, err, block, out, logs.String())
		}
		t.Logf("block %d ok:\n%s", i+1, out)
	}
	if err := stop(); err != nil {
		t.Fatalf("daemon exit after the README session: %v\n%s", err, logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and readers at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
