package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// Agent is a connection to qemu-guest-agent through its host-side
// socket (the chardev of a virtserialport named org.qemu.guest_agent.0).
// The channel keeps bytes across connections, so every session starts
// with guest-sync-delimited: everything before the agent's 0xFF
// delimiter and the answer carrying our random id is stale and dropped.
type Agent struct {
	path string
	nc   net.Conn
	r    *bufio.Reader
}

// DialAgent connects to the agent socket and synchronizes; an agent that
// does not answer within timeout is an error.
func DialAgent(ctx context.Context, path string, timeout time.Duration) (*Agent, error) {
	return DialAgentWith(ctx, path, timeout, nil)
}

// DialAgentWith is DialAgent through an Opener.
func DialAgentWith(ctx context.Context, path string, timeout time.Duration, open Opener) (*Agent, error) {
	nc, err := dialUnix(ctx, path, open)
	if err != nil {
		return nil, fmt.Errorf("guest agent socket %s: %w", path, err)
	}
	a := &Agent{path: path, nc: nc, r: bufio.NewReaderSize(nc, 64<<10)}
	if err := a.sync(ctx, timeout); err != nil {
		nc.Close()
		return nil, err
	}
	return a, nil
}

func (a *Agent) sync(ctx context.Context, timeout time.Duration) error {
	a.setDeadline(ctx, timeout)
	id := rand.Int64N(1<<52) + 1
	req, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": id}})
	// 0xFF first: it resets the agent's parser after a half-sent command.
	if _, err := a.nc.Write(append(append([]byte{0xff}, req...), '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w", a.path, err)
	}
	for {
		if _, err := a.r.ReadBytes(0xff); err != nil {
			return fmt.Errorf("guest agent %s did not answer (is qemu-guest-agent running in the guest?): %w", a.path, err)
		}
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("guest agent %s: %w", a.path, err)
		}
		var m struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line, &m) == nil && m.Return != nil && *m.Return == id {
			return nil
		}
	}
}

func (a *Agent) setDeadline(ctx context.Context, timeout time.Duration) {
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	a.nc.SetDeadline(dl)
}

// Execute runs one agent command within timeout.
func (a *Agent) Execute(ctx context.Context, cmd string, timeout time.Duration, result any) error {
	a.setDeadline(ctx, timeout)
	req, _ := json.Marshal(map[string]any{"execute": cmd})
	if _, err := a.nc.Write(append(req, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %s: %w", a.path, cmd, err)
	}
	for {
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("guest agent %s: %s: %w", a.path, cmd, err)
		}
		var m struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			continue // a stray delimiter or an old answer
		}
		if m.Error != nil {
			return &Error{Command: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if m.Return == nil {
			continue
		}
		if result != nil {
			return json.Unmarshal(m.Return, result)
		}
		return nil
	}
}

// Freeze freezes the guest's file systems and returns how many it froze.
func (a *Agent) Freeze(ctx context.Context) (int, error) {
	var n int
	err := a.Execute(ctx, "guest-fsfreeze-freeze", 60*time.Second, &n)
	return n, err
}

// Thaw thaws the guest's file systems and returns how many it thawed.
func (a *Agent) Thaw(ctx context.Context) (int, error) {
	var n int
	err := a.Execute(ctx, "guest-fsfreeze-thaw", 30*time.Second, &n)
	return n, err
}

// FreezeStatus returns "frozen" or "thawed".
func (a *Agent) FreezeStatus(ctx context.Context) (string, error) {
	var s string
	err := a.Execute(ctx, "guest-fsfreeze-status", 10*time.Second, &s)
	return s, err
}

// Close closes the connection.
func (a *Agent) Close() error { return a.nc.Close() }
