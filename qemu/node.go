package qemu

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Scheme is the URI scheme of a live VM disk source:
// qmp+unix:///NODE?socket=PATH[&qga=PATH].
const Scheme = "qmp+unix"

// Target is a parsed live VM disk URI.
type Target struct {
	// Ref is the QEMU block node name or device id (qdev id or block
	// backend name) of the disk.
	Ref string
	// Socket is the VM's QMP socket.
	Socket string
	// Agent is the guest agent socket; "" means find it through QMP,
	// "none" means do not use the agent.
	Agent string
}

// IsURI reports whether spec is a live VM disk URI.
func IsURI(spec string) bool { return strings.HasPrefix(spec, Scheme+"://") }

// ParseURI parses qmp+unix:///NODE?socket=PATH[&qga=PATH|none].
func ParseURI(spec string) (Target, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return Target{}, fmt.Errorf("live VM disk %q: %w", spec, err)
	}
	if u.Scheme != Scheme {
		return Target{}, fmt.Errorf("live VM disk %q: scheme %q, want %s://", spec, u.Scheme, Scheme)
	}
	if u.Host != "" {
		return Target{}, fmt.Errorf("live VM disk %q: no host allowed (qmp+unix:///NODE?socket=PATH)", spec)
	}
	t := Target{Ref: strings.TrimPrefix(u.Path, "/")}
	q := u.Query()
	t.Socket = q.Get("socket")
	t.Agent = q.Get("qga")
	for k := range q {
		if k != "socket" && k != "qga" {
			return Target{}, fmt.Errorf("live VM disk %q: unknown parameter %q (socket=PATH, qga=PATH|none)", spec, k)
		}
	}
	if t.Ref == "" || strings.Contains(t.Ref, "/") {
		return Target{}, fmt.Errorf("live VM disk %q: name the QEMU block node or device: qmp+unix:///NODE?socket=PATH", spec)
	}
	if t.Socket == "" || !strings.HasPrefix(t.Socket, "/") {
		return Target{}, fmt.Errorf("live VM disk %q: socket=PATH must be the absolute path of the VM's QMP socket", spec)
	}
	if t.Agent != "" && t.Agent != "none" && !strings.HasPrefix(t.Agent, "/") {
		return Target{}, fmt.Errorf("live VM disk %q: qga=PATH must be an absolute path (or none)", spec)
	}
	return t, nil
}

// URI formats a live VM disk URI.
func (t Target) URI() string {
	q := url.Values{"socket": {t.Socket}}
	if t.Agent != "" {
		q.Set("qga", t.Agent)
	}
	return (&url.URL{Scheme: Scheme, Path: "/" + t.Ref, RawQuery: strings.ReplaceAll(q.Encode(), "%2F", "/")}).String()
}

// BitmapInfo is a dirty bitmap as QEMU reports it.
type BitmapInfo struct {
	Name         string `json:"name"`
	Count        int64  `json:"count"`
	Granularity  int64  `json:"granularity"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
}

type nodeInfo struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	RO       bool   `json:"ro"`
	File     string `json:"file"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
	Bitmaps []BitmapInfo `json:"dirty-bitmaps"`
}

type blockInfo struct {
	Device    string    `json:"device"`
	Qdev      string    `json:"qdev"`
	Removable bool      `json:"removable"`
	Inserted  *nodeInfo `json:"inserted"`
}

// Node is a resolved disk: the block node csbs fleeces and tracks.
type Node struct {
	Name    string // node name
	Driver  string // qcow2, raw, ...
	Size    int64
	RO      bool
	File    string
	Bitmaps []BitmapInfo
}

// Bitmap returns the named dirty bitmap of the node.
func (n Node) Bitmap(name string) (BitmapInfo, bool) {
	for _, b := range n.Bitmaps {
		if b.Name == name {
			return b, true
		}
	}
	return BitmapInfo{}, false
}

// ErrNoNode means the VM has no such block node or device.
var ErrNoNode = errors.New("no such disk in the VM")

// filterDrivers pass I/O through to a child: backing up the filter would
// put bitmaps and the fleecing point on the wrong node.
func isFilter(drv string) bool {
	return slices.Contains([]string{"throttle", "copy-on-read", "compress", "preallocate", "blkdebug", "blkverify", "copy-before-write", "snapshot-access", "blklogwrites"}, drv)
}

func queryNodes(ctx context.Context, c *Conn) ([]nodeInfo, []blockInfo, error) {
	var nodes []nodeInfo
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, nil, err
	}
	var blocks []blockInfo
	if err := c.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, nil, err
	}
	return nodes, blocks, nil
}

// qdevID returns the device id in a qdev path ("/machine/peripheral/vda/
// virtio-backend" → "vda"), or the path itself when it is a bare id.
func qdevID(qdev string) string {
	if rest, ok := strings.CutPrefix(qdev, "/machine/peripheral/"); ok {
		id, _, _ := strings.Cut(rest, "/")
		return id
	}
	if strings.HasPrefix(qdev, "/") {
		return ""
	}
	return qdev
}

// Resolve finds the block node of a disk named by node name or device id.
func Resolve(ctx context.Context, c *Conn, ref string) (Node, error) {
	nodes, blocks, err := queryNodes(ctx, c)
	if err != nil {
		return Node{}, err
	}
	name := ""
	for _, n := range nodes {
		if n.NodeName == ref {
			name = ref
		}
	}
	if name == "" {
		for _, b := range blocks {
			if b.Inserted != nil && (b.Device == ref || qdevID(b.Qdev) == ref) {
				name = b.Inserted.NodeName
			}
		}
	}
	if name == "" {
		var have []string
		for _, b := range blocks {
			if b.Inserted != nil {
				have = append(have, describe(b))
			}
		}
		return Node{}, fmt.Errorf("%w: the VM (%s) has no block node or device %q; its disks: %s", ErrNoNode, c.path, ref, strings.Join(have, ", "))
	}
	for _, n := range nodes {
		if n.NodeName != name {
			continue
		}
		if isFilter(n.Drv) {
			return Node{}, fmt.Errorf("disk %q of the VM (%s) is node %s, a %s filter: name the format node below it (see query-named-block-nodes)", ref, c.path, n.NodeName, n.Drv)
		}
		return Node{Name: n.NodeName, Driver: n.Drv, Size: n.Image.VirtualSize, RO: n.RO, File: n.File, Bitmaps: n.Bitmaps}, nil
	}
	return Node{}, fmt.Errorf("%w: node %s of disk %q vanished", ErrNoNode, name, ref)
}

func describe(b blockInfo) string {
	var parts []string
	if id := qdevID(b.Qdev); id != "" {
		parts = append(parts, "device "+id)
	}
	if b.Device != "" {
		parts = append(parts, "drive "+b.Device)
	}
	parts = append(parts, "node "+b.Inserted.NodeName)
	return strings.Join(parts, " / ")
}

// DiscoveredDisk is a disk of a running VM as Discover lists it.
type DiscoveredDisk struct {
	// Name is a csbs disk name derived from the device id.
	Name string `json:"name"`
	// Ref is the most stable name of the disk for a URI: the device id,
	// else the block backend name, else the node name.
	Ref      string `json:"ref"`
	Source   string `json:"source"` // ready qmp+unix:// URI
	NodeName string `json:"node_name"`
	Driver   string `json:"driver"`
	Size     int64  `json:"size"`
	File     string `json:"file"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Skipped says why the disk cannot be backed up ("" if it can).
	Skipped string `json:"skipped,omitempty"`
}

var diskNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// Discover lists the disks of the VM behind socket: every device with a
// medium, named as the URI should name it.
func Discover(ctx context.Context, socket, agent string, open Opener) ([]DiscoveredDisk, error) {
	c, err := DialWith(ctx, socket, open)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	nodes, blocks, err := queryNodes(ctx, c)
	if err != nil {
		return nil, err
	}
	byName := map[string]nodeInfo{}
	for _, n := range nodes {
		byName[n.NodeName] = n
	}
	var out []DiscoveredDisk
	used := map[string]bool{}
	for i, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		d := DiscoveredDisk{NodeName: b.Inserted.NodeName, Driver: b.Inserted.Drv, Size: b.Inserted.Image.VirtualSize, File: b.Inserted.File, ReadOnly: b.Inserted.RO}
		if n, ok := byName[d.NodeName]; ok {
			d.Size = n.Image.VirtualSize
		}
		switch {
		case qdevID(b.Qdev) != "":
			d.Ref = qdevID(b.Qdev)
		case b.Device != "":
			d.Ref = b.Device
		case !strings.HasPrefix(d.NodeName, "#"):
			d.Ref = d.NodeName
		default:
			d.Skipped = "no stable name: give the device an id (-device ...,id=vda) or the node a node-name"
		}
		switch {
		case b.Removable:
			d.Skipped = "removable medium (CD-ROM or floppy)"
		case isFilter(d.Driver):
			d.Skipped = fmt.Sprintf("root node %s is a %s filter: add the format node below it with --disk NAME=qmp+unix:///NODE?socket=...", d.NodeName, d.Driver)
		}
		d.Name = diskName(d.Ref, i, used)
		t := Target{Ref: d.Ref, Socket: socket, Agent: agent}
		if d.Ref != "" {
			d.Source = t.URI()
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the VM (%s) has no disk with a medium", socket)
	}
	return out, nil
}

// diskName makes a valid csbs disk name (vda) from a device id.
func diskName(ref string, i int, used map[string]bool) string {
	var b strings.Builder
	for _, r := range strings.ToLower(ref) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	name := b.String()
	if len(name) > 16 {
		name = name[:16]
	}
	if !diskNameRE.MatchString(name) || used[name] {
		name = fmt.Sprintf("disk%d", i)
	}
	for j := 0; used[name]; j++ {
		name = fmt.Sprintf("disk%d", i+100*(j+1))
	}
	used[name] = true
	return name
}

// findAgent looks for the host socket of the VM's guest agent channel: a
// virtserialport named org.qemu.guest_agent.0 whose chardev is a unix
// socket server. It returns "" when there is none or the guest has not
// opened the port (no agent runs).
func findAgent(ctx context.Context, c *Conn) (string, error) {
	var chardevs []struct {
		Label        string `json:"label"`
		Filename     string `json:"filename"`
		FrontendOpen bool   `json:"frontend-open"`
	}
	if err := c.Execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		return "", err
	}
	for _, parent := range []string{"/machine/peripheral", "/machine/peripheral-anon"} {
		var children []struct{ Name, Type string }
		if err := c.Execute(ctx, "qom-list", map[string]any{"path": parent}, &children); err != nil {
			continue
		}
		for _, ch := range children {
			if ch.Type != "child<virtserialport>" {
				continue
			}
			path := parent + "/" + ch.Name
			var name, chardev string
			if c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "name"}, &name) != nil || name != "org.qemu.guest_agent.0" {
				continue
			}
			if c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "chardev"}, &chardev) != nil {
				continue
			}
			for _, cd := range chardevs {
				if cd.Label != chardev || !cd.FrontendOpen {
					continue
				}
				f := strings.TrimPrefix(cd.Filename, "disconnected:")
				if p, ok := strings.CutPrefix(f, "unix:"); ok {
					p, _, _ = strings.Cut(p, ",")
					return p, nil
				}
			}
		}
	}
	return "", nil
}

// RemoveBitmaps removes the dirty bitmaps whose names start with prefix
// from the disk ref.
func RemoveBitmaps(ctx context.Context, c *Conn, ref, prefix string) error {
	n, err := Resolve(ctx, c, ref)
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range n.Bitmaps {
		if strings.HasPrefix(b.Name, prefix) {
			if err := c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": n.Name, "name": b.Name}, nil); err != nil && !isMissing(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
