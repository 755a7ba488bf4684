// Package appliance runs a csbs daemon for the benchmarks: a fresh data
// directory, the real binary, driven through its CLI, with an API client
// for polling that costs no process per poll.
package appliance

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"csbs/api"
	"csbs/catalog"
)

// Appliance is one running daemon.
type Appliance struct {
	Bin, Dir, Config string
	Cmd              *exec.Cmd
	API              *api.Client
}

// Start writes a config (data_dir = Dir/csbs, warn logging, plus extra
// TOML appended) and starts `csbs serve` with env added to the
// environment; it returns once the API answers.
func Start(bin, dir, extra string, env ...string) (*Appliance, error) {
	a := &Appliance{Bin: bin, Dir: dir, Config: filepath.Join(dir, "csbs.toml")}
	cfg := "data_dir = \"csbs\"\n[log]\nlevel = \"warn\"\n" + extra
	if err := os.WriteFile(a.Config, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	a.Cmd = exec.Command(bin, "serve", "--config", a.Config)
	a.Cmd.Env = append(os.Environ(), env...)
	a.Cmd.Stderr = os.Stderr
	if err := a.Cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if _, _, err := a.CLI("status"); err == nil {
			break
		}
		if i == 400 {
			a.Stop()
			return nil, fmt.Errorf("daemon in %s did not answer", dir)
		}
		time.Sleep(25 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "csbs", "admin.token"))
	if err != nil {
		a.Stop()
		return nil, err
	}
	a.API = api.NewUnixClient(filepath.Join(dir, "csbs", "csbs.sock"), strings.TrimSpace(string(tok)))
	return a, nil
}

// CLI runs one csbs command against the daemon and returns its wall time
// and combined output.
func (a *Appliance) CLI(args ...string) (time.Duration, string, error) {
	start := time.Now()
	cmd := exec.Command(a.Bin, append([]string{"--config", a.Config}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("csbs %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return time.Since(start), out.String(), err
}

// NBDSocket is the daemon's NBD socket.
func (a *Appliance) NBDSocket() string { return filepath.Join(a.Dir, "csbs", "nbd.sock") }

// WaitHydrated polls instant restore id every few milliseconds until its
// hydration is complete (its data and bits synced).
func (a *Appliance) WaitHydrated(ctx context.Context, id string) error {
	for {
		var r catalog.Restore
		if err := a.API.Do(ctx, "GET", "/v1/restores/"+id, nil, nil, &r); err != nil {
			return err
		}
		switch r.State {
		case catalog.RestoreComplete:
			return nil
		case catalog.RestoreRunning:
		default:
			return fmt.Errorf("restore %s is %s: %s", id, r.State, r.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Pid is the daemon's process id.
func (a *Appliance) Pid() int { return a.Cmd.Process.Pid }

// Stop ends the daemon (SIGTERM) and waits for it.
func (a *Appliance) Stop() {
	if a.Cmd == nil || a.Cmd.Process == nil {
		return
	}
	a.Cmd.Process.Signal(syscall.SIGTERM)
	a.Cmd.Wait()
	a.Cmd = nil
}
