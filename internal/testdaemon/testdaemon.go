// Package testdaemon runs a real daemon in-process on a temp data dir for
// tests, with an injectable clock, and gives API clients for it.
package testdaemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"csbs/api"
	"csbs/blockstore"
	"csbs/catalog"
	"csbs/config"
	"csbs/daemon"
	"csbs/scheduler"
)

// Daemon is a running in-process appliance.
type Daemon struct {
	Dir    string
	Config config.Config
	Admin  *api.Client
	Clock  scheduler.Clock
	cancel context.CancelFunc
	done   chan error
}

// Start runs a daemon in t's temp dir. mod may adjust the config.
func Start(t testing.TB, clock scheduler.Clock, mod func(*config.Config)) *Daemon {
	t.Helper()
	return StartIn(t, t.TempDir(), clock, mod)
}

// StartIn runs a daemon on the data under dir (a restart when a daemon
// ran there before).
func StartIn(t testing.TB, dir string, clock scheduler.Clock, mod func(*config.Config)) *Daemon {
	t.Helper()
	cfg := config.Default()
	cfg.Region = "cn-test-1"
	cfg.AvailabilityZones = []string{"cn-test-1a", "cn-test-1b"}
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Log.Level = "warn"
	if mod != nil {
		mod(&cfg)
	}
	cfg.API.Socket = filepath.Join(cfg.DataDir, "csbs.sock")
	cfg.NBD.Socket = filepath.Join(cfg.DataDir, "nbd.sock")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if clock == nil {
		clock = scheduler.RealClock{}
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := daemon.New(cfg, daemon.Options{Clock: clock, Log: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	td := &Daemon{Dir: dir, Config: cfg, Clock: clock, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() { td.done <- d.Serve(ctx, ready) }()
	select {
	case <-ready:
	case err := <-td.done:
		t.Fatalf("daemon: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not start")
	}
	secret, err := os.ReadFile(filepath.Join(cfg.DataDir, daemon.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	td.Admin = td.Client(strings.TrimSpace(string(secret)), "")
	t.Cleanup(func() { td.Stop(t) })
	return td
}

// Client returns a client with the given token and project header.
func (d *Daemon) Client(token, project string) *api.Client {
	c := api.NewUnixClient(d.Config.API.Socket, token)
	c.Project = project
	return c
}

// Stop shuts the daemon down (idempotent).
func (d *Daemon) Stop(t testing.TB) {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("daemon stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("daemon did not stop")
		return
	}
	CheckCatalog(t, d.Config)
}

// CheckCatalog opens the store of a stopped daemon and fails the test if
// the catalog's indexes or counters disagree with its objects, so that
// every test that runs a daemon checks that invariant at its end.
func CheckCatalog(t testing.TB, cfg config.Config) {
	t.Helper()
	// The daemon has exited, but a child it forked just before (an
	// umount, fusermount3) holds a copy of the store's lock until its
	// exec closes it: CI saw the lock busy once. A holder for longer
	// than a few seconds is a failure.
	var s *blockstore.Store
	var err error
	start := time.Now()
	for {
		s, err = blockstore.Open(cfg.StoreDir(), blockstore.Options{BlockSize: int(cfg.Store.BlockSize)})
		if !errors.Is(err, blockstore.ErrInUse) || time.Since(start) > 5*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if waited := time.Since(start); err == nil && waited > 50*time.Millisecond {
		t.Logf("the store's lock was busy for %v after the daemon exited", waited.Round(time.Millisecond))
	}
	if err != nil {
		t.Errorf("open the store to check the catalog: %v", err)
		return
	}
	defer s.Close()
	if err := catalog.New(s.KV(), catalog.Options{}).Check(); err != nil {
		t.Error(err)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
