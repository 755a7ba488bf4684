package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Conn is a QMP connection: JSON objects over a unix socket, one command
// at a time, answered in order; events arrive in between and are kept
// for Events.
type Conn struct {
	path    string
	nc      net.Conn
	Version Version

	wmu sync.Mutex // one command at a time

	mu      sync.Mutex
	next    int64
	waiting map[int64]chan reply
	events  []Event
	err     error
	done    chan struct{}
}

// Version is QEMU's version from the QMP greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

// AtLeast reports whether the version is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// Error is an error answer to a QMP command.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string { return fmt.Sprintf("QMP %s: %s", e.Command, e.Desc) }

// ErrNotQMP means the socket answered, but not as QEMU's QMP.
var ErrNotQMP = errors.New("not a QEMU QMP socket")

// ErrVMGone means the QMP connection ended: the VM stopped or crashed.
var ErrVMGone = errors.New("QMP connection closed (the VM stopped or crashed)")

type reply struct {
	ret json.RawMessage
	err error
}

// greetingTimeout bounds the wait for QEMU's greeting: a socket that
// accepts but stays silent (another QMP client holds the monitor, or it
// is not QEMU) fails instead of hanging the backup.
const greetingTimeout = 10 * time.Second

// Opener checks a socket path before it is dialed and returns the path
// to dial (a /proc/self/fd path of a checked handle, say) and a func to
// call once dialed. A nil Opener dials the path as it is.
type Opener func(path string) (dial string, done func(), err error)

func dialUnix(ctx context.Context, path string, open Opener) (net.Conn, error) {
	dial := path
	if open != nil {
		p, done, err := open(path)
		if err != nil {
			return nil, err
		}
		defer done()
		dial = p
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", dial)
}

// Dial connects to a QMP socket, checks the greeting and leaves
// capabilities negotiation mode.
func Dial(ctx context.Context, path string) (*Conn, error) { return DialWith(ctx, path, nil) }

// DialWith is Dial through an Opener.
func DialWith(ctx context.Context, path string, open Opener) (*Conn, error) {
	nc, err := dialUnix(ctx, path, open)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP socket %s (is the VM running?): %w", path, err)
	}
	deadline := time.Now().Add(greetingTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	nc.SetReadDeadline(deadline)
	r := bufio.NewReaderSize(nc, 64<<10)
	line, err := r.ReadBytes('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("QMP socket %s: no greeting (%v): %w; another client may hold the monitor", path, err, ErrNotQMP)
	}
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major, Minor, Micro int
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		nc.Close()
		return nil, fmt.Errorf("QMP socket %s: greeting %.80q: %w", path, line, ErrNotQMP)
	}
	nc.SetReadDeadline(time.Time{})
	c := &Conn{path: path, nc: nc, waiting: map[int64]chan reply{}, done: make(chan struct{})}
	v := g.QMP.Version
	c.Version = Version{v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, v.Package}
	go c.readLoop(r)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP socket %s: %w", path, err)
	}
	return c, nil
}

func (c *Conn) readLoop(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		if line, err = r.ReadBytes('\n'); err != nil {
			break
		}
		var m struct {
			ID     *int64          `json:"id"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		if jerr := json.Unmarshal(line, &m); jerr != nil {
			err = fmt.Errorf("QMP socket %s: bad message %.80q: %w", c.path, line, jerr)
			break
		}
		c.mu.Lock()
		switch {
		case m.Event != "":
			if len(c.events) < 4096 {
				c.events = append(c.events, Event{Name: m.Event, Data: m.Data})
			}
		case m.ID != nil:
			if ch, ok := c.waiting[*m.ID]; ok {
				delete(c.waiting, *m.ID)
				rp := reply{ret: m.Return}
				if m.Error != nil {
					rp.err = &Error{Class: m.Error.Class, Desc: m.Error.Desc}
				}
				ch <- rp
			}
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.err = fmt.Errorf("QMP socket %s: %w (%v)", c.path, ErrVMGone, err)
	for id, ch := range c.waiting {
		ch <- reply{err: c.err}
		delete(c.waiting, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// Execute runs one command; result, if not nil, receives the JSON
// "return" value. A canceled context abandons the wait (the answer is
// dropped when it comes).
func (c *Conn) Execute(ctx context.Context, cmd string, args, result any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.next++
	id := c.next
	c.waiting[id] = ch
	c.mu.Unlock()
	req := map[string]any{"execute": cmd, "id": id}
	if m, ok := args.(map[string]any); ok && m == nil {
		args = nil
	}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := c.nc.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("QMP %s on %s: %w (%v)", cmd, c.path, ErrVMGone, err)
	}
	select {
	case rp := <-ch:
		if rp.err != nil {
			var qe *Error
			if errors.As(rp.err, &qe) {
				qe.Command = cmd
			}
			return rp.err
		}
		if result != nil {
			if err := json.Unmarshal(rp.ret, result); err != nil {
				return fmt.Errorf("QMP %s: unexpected answer %.120s: %w", cmd, rp.ret, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
		return fmt.Errorf("QMP %s on %s: %w", cmd, c.path, ctx.Err())
	}
}

// Events returns and forgets the events received so far.
func (c *Conn) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev := c.events
	c.events = nil
	return ev
}

// Done is closed when the connection ends (the VM went away).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection.
func (c *Conn) Close() error {
	err := c.nc.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
