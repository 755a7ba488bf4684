package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Consistency labels of a live VM backup.
const (
	// FSConsistent: the guest agent froze the guest's file systems around
	// the point in time; they need no journal replay.
	FSConsistent = "fs-consistent"
	// CrashConsistent: the disks as after a power cut at the point in
	// time; a journaling file system replays its journal.
	CrashConsistent = "crash-consistent"
)

// DiskSpec is one disk of a live VM backup.
type DiskSpec struct {
	Name string // csbs disk name (vda)
	Ref  string // node name or device id
	// ParentBitmap is the dirty bitmap created at the parent backup's
	// point in time ("" when there is no usable parent), ParentSize the
	// disk's size in the parent.
	ParentBitmap string
	ParentSize   int64
	// NoParentReason says why there is no parent (shown as the full-read
	// reason).
	NoParentReason string
	// NewBitmap is the dirty bitmap to create at this backup's point in
	// time: it tracks the changes for the next backup.
	NewBitmap string
	// KeepBitmap is the bitmap of the disk's last backup when it is not
	// the parent (a --full backup, say): it stays until this backup is
	// saved, so that a failure leaves the chain as it was.
	KeepBitmap string
	// StalePrefix: other bitmaps with this prefix are left over from
	// earlier backups or failed runs and are removed.
	StalePrefix string
}

// Options describe one live VM backup session.
type Options struct {
	Socket string // QMP socket
	Agent  string // guest agent socket; "" finds it through QMP; "none" skips
	// Open checks the QMP and guest agent sockets before they are dialed
	// (nil: dial as they are).
	Open Opener
	// Dir is this session's own directory (created; must not exist): the
	// fleecing overlays, QEMU's NBD socket and the record of what was
	// added to the VM, which Recover reads after a crash.
	Dir   string
	ID    string // unique session id (the backup id)
	Disks []DiskSpec
	Log   *slog.Logger
	// AfterPointInTime, if set, runs right after the transaction that
	// fixed the point in time (tests pause the VM there).
	AfterPointInTime func()
}

// Disk is one disk of an open session.
type Disk struct {
	Spec DiskSpec
	Node Node
	// CBT: the parent bitmap is valid, and ChangedBitmap (exported with
	// the disk) holds exactly the changes between the parent's point in
	// time and this one. Otherwise FullReason says why the whole disk
	// must be read.
	CBT           bool
	ChangedBitmap string
	FullReason    string
	// Persistent: the new bitmap is stored in the image (qcow2) and
	// survives a VM restart.
	Persistent bool
}

// Session is one live VM backup: QEMU holds the disks' state at one
// point in time (image fleecing) and exports it over NBD until End.
type Session struct {
	c           *Conn
	opt         Options
	tag         string
	disks       []Disk
	st          *state
	consistency string
	notes       []string
}

type bitmapRef struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// state is the record of what a session added to the VM, written before
// each addition so that a crash leaves nothing unaccounted for.
type state struct {
	path string

	ID            string      `json:"id"`
	Socket        string      `json:"socket"`
	Agent         string      `json:"agent,omitempty"`
	Created       time.Time   `json:"created"`
	Frozen        bool        `json:"frozen,omitempty"`
	NBDServer     bool        `json:"nbd_server,omitempty"`
	Exports       []string    `json:"exports,omitempty"`
	Jobs          []string    `json:"jobs,omitempty"`
	Nodes         []string    `json:"nodes,omitempty"` // in creation order
	TempBitmaps   []bitmapRef `json:"temp_bitmaps,omitempty"`
	NewBitmaps    []bitmapRef `json:"new_bitmaps,omitempty"`
	ParentBitmaps []bitmapRef `json:"parent_bitmaps,omitempty"`
}

const stateFile = "session.json"

// save writes the record durably.
func (s *state) save() error { return s.write(true) }

func (s *state) write(sync bool) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record VM session: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("record VM session: %w", err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("record VM session: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("record VM session: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil && sync {
		d.Sync()
		d.Close()
	} else if err == nil {
		d.Close()
	}
	return nil
}

// NBDSocket is the path of QEMU's NBD server socket of a session dir.
func NBDSocket(dir string) string { return filepath.Join(dir, "nbd.sock") }

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// Begin opens a session: it connects to QMP, resolves the disks, checks
// each parent bitmap, creates a fleecing overlay per disk, freezes the
// guest's file systems if its agent answers, fixes the point in time for
// all disks in one QMP transaction (new bitmaps, frozen copies of the
// parent bitmaps, copy-before-write jobs), thaws, and exports the frozen
// views with QEMU's NBD server. On error everything added is removed.
func Begin(ctx context.Context, opt Options) (*Session, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if len(opt.Disks) == 0 {
		return nil, errors.New("VM session without disks")
	}
	if len(NBDSocket(opt.Dir)) > maxSocketPath {
		return nil, fmt.Errorf("VM session directory %s is too long for a unix socket path (%d > %d bytes): choose a shorter data_dir", opt.Dir, len(NBDSocket(opt.Dir)), maxSocketPath)
	}
	sum := sha256.Sum256([]byte(opt.ID))
	s := &Session{opt: opt, tag: hex.EncodeToString(sum[:4])}
	if err := os.MkdirAll(filepath.Dir(opt.Dir), 0o700); err != nil {
		return nil, fmt.Errorf("VM session: %w", err)
	}
	if err := os.Mkdir(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("VM session: %w", err)
	}
	s.st = &state{path: filepath.Join(opt.Dir, stateFile), ID: opt.ID, Socket: opt.Socket, Created: time.Now().UTC()}
	// Not synced: nothing is in the VM yet; the record only marks the dir.
	if err := s.st.write(false); err != nil {
		os.RemoveAll(opt.Dir)
		return nil, err
	}
	c, err := DialWith(ctx, opt.Socket, opt.Open)
	if err != nil {
		os.RemoveAll(opt.Dir)
		return nil, err
	}
	s.c = c
	if err := s.begin(ctx); err != nil {
		if cerr := s.End(context.WithoutCancel(ctx), false); cerr != nil {
			opt.Log.Warn("clean up after a failed VM session", "socket", opt.Socket, "err", cerr)
		}
		return nil, err
	}
	return s, nil
}

func (s *Session) begin(ctx context.Context) error {
	var status struct {
		Status string `json:"status"`
	}
	if err := s.c.Execute(ctx, "query-status", nil, &status); err != nil {
		return err
	}
	switch status.Status {
	case "inmigrate", "postmigrate", "finish-migrate", "save-vm", "restore-vm":
		return fmt.Errorf("the VM (%s) is %s: its disks are not its own now; back it up when it runs", s.opt.Socket, status.Status)
	}
	s.disks = make([]Disk, len(s.opt.Disks))
	seenNode := map[string]string{}
	for i, spec := range s.opt.Disks {
		n, err := Resolve(ctx, s.c, spec.Ref)
		if err != nil {
			return fmt.Errorf("disk %s: %w", spec.Name, err)
		}
		if other, dup := seenNode[n.Name]; dup {
			return fmt.Errorf("disks %s and %s are the same QEMU node %s", other, spec.Name, n.Name)
		}
		seenNode[n.Name] = spec.Name
		d := Disk{Spec: spec, Node: n, Persistent: n.Driver == "qcow2"}
		d.FullReason = checkParent(spec, n)
		if d.FullReason == "" {
			d.CBT = true
			d.ChangedBitmap = spec.NewBitmap + "-changes"
		}
		for _, name := range []string{spec.ParentBitmap, spec.KeepBitmap} {
			if name != "" && !slices.Contains(s.st.ParentBitmaps, bitmapRef{n.Name, name}) {
				s.st.ParentBitmaps = append(s.st.ParentBitmaps, bitmapRef{n.Name, name})
			}
		}
		// Bitmaps left by failed runs or by deleted backups.
		for _, b := range n.Bitmaps {
			if spec.StalePrefix != "" && strings.HasPrefix(b.Name, spec.StalePrefix) && b.Name != spec.ParentBitmap && b.Name != spec.KeepBitmap && !b.Busy {
				if err := s.c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": n.Name, "name": b.Name}, nil); err != nil && !isMissing(err) {
					return fmt.Errorf("disk %s: remove stale bitmap %s: %w", spec.Name, b.Name, err)
				}
				s.opt.Log.Info("removed stale dirty bitmap", "node", n.Name, "bitmap", b.Name)
			}
		}
		if !d.Persistent {
			s.notes = append(s.notes, fmt.Sprintf("disk %s: %s image, its dirty bitmap lives only while the VM runs (a restart means a full read)", spec.Name, n.Driver))
		}
		s.disks[i] = d
	}

	// One record of everything this session will add (cleanup tolerates
	// what was never made), written before the VM is touched.
	agent := s.agent(ctx)
	alreadyFrozen := false
	if agent != nil {
		// Someone else's freeze is left as found: thawing it would break
		// their snapshot.
		if st, err := agent.FreezeStatus(ctx); err == nil && st == "frozen" {
			s.notes = append(s.notes, "guest file systems were already frozen by someone else (left frozen)")
			alreadyFrozen = true
			agent.Close()
			agent = nil
		}
	}
	var actions []map[string]any
	for i, d := range s.disks {
		s.st.Nodes = append(s.st.Nodes, s.name(i, "f"), s.name(i, "o"))
		add := map[string]any{"node": d.Node.Name, "name": d.Spec.NewBitmap, "persistent": d.Persistent}
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": add})
		s.st.NewBitmaps = append(s.st.NewBitmaps, bitmapRef{d.Node.Name, d.Spec.NewBitmap})
		if d.CBT {
			actions = append(actions,
				map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.Node.Name, "name": d.ChangedBitmap, "persistent": false, "disabled": true}},
				map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": d.Node.Name, "target": d.ChangedBitmap, "bitmaps": []string{d.Spec.ParentBitmap}}})
			s.st.TempBitmaps = append(s.st.TempBitmaps, bitmapRef{d.Node.Name, d.ChangedBitmap})
		}
		job := s.name(i, "j")
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": job, "device": d.Node.Name, "target": s.name(i, "o"), "sync": "none",
		}})
		s.st.Jobs = append(s.st.Jobs, job)
		s.st.Exports = append(s.st.Exports, s.name(i, "e"))
	}
	s.st.Frozen = agent != nil
	if err := s.st.save(); err != nil {
		if agent != nil {
			agent.Close()
		}
		return err
	}
	for i := range s.disks {
		if err := s.addOverlay(ctx, i); err != nil {
			if agent != nil {
				agent.Close()
			}
			return fmt.Errorf("disk %s: fleecing overlay: %w", s.disks[i].Spec.Name, err)
		}
	}
	s.consistency = CrashConsistent
	if alreadyFrozen {
		s.consistency = FSConsistent
	}
	if agent != nil {
		n, err := agent.Freeze(ctx)
		switch {
		case err != nil:
			s.notes = append(s.notes, "guest agent could not freeze the file systems: "+err.Error())
		case n == 0:
			s.notes = append(s.notes, "guest agent froze no file system")
		default:
			s.consistency = FSConsistent
		}
	}
	txErr := s.c.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
	if agent != nil {
		// Thaw at once, also when the transaction failed or the freeze
		// half-failed: a frozen guest stalls every writer.
		if _, err := agent.Thaw(context.WithoutCancel(ctx)); err != nil {
			if st, serr := agent.FreezeStatus(context.WithoutCancel(ctx)); serr != nil || st != "thawed" {
				agent.Close()
				return errors.Join(txErr, fmt.Errorf("guest agent could not thaw the guest's file systems: %w", err))
			}
		}
		agent.Close()
		// Not saved: a recovery that thaws again does no harm.
		s.st.Frozen = false
	}
	if txErr != nil {
		return fmt.Errorf("fix the point in time: %w", txErr)
	}
	if s.opt.AfterPointInTime != nil {
		s.opt.AfterPointInTime()
	}

	// Recorded just before it starts: a recovery must never stop an NBD
	// server that someone else runs.
	s.st.NBDServer = true
	if err := s.st.save(); err != nil {
		return err
	}
	addr := map[string]any{"type": "unix", "data": map[string]any{"path": NBDSocket(s.opt.Dir)}}
	if err := s.c.Execute(ctx, "nbd-server-start", map[string]any{"addr": addr}, nil); err != nil {
		s.st.NBDServer = false
		if serr := s.st.save(); serr != nil {
			return errors.Join(err, serr)
		}
		if strings.Contains(err.Error(), "already running") {
			return fmt.Errorf("QEMU's NBD server of the VM (%s) is already in use (another backup or a migration): %w", s.opt.Socket, err)
		}
		return err
	}
	for i, d := range s.disks {
		id := s.name(i, "e")
		args := map[string]any{"type": "nbd", "id": id, "node-name": s.name(i, "o"), "name": d.Spec.Name, "writable": false}
		if d.CBT {
			args["bitmaps"] = []string{d.ChangedBitmap}
		}
		if err := s.c.Execute(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("disk %s: export: %w", d.Spec.Name, err)
		}
	}
	return nil
}

// checkParent says why a disk's parent bitmap cannot be trusted ("" if
// it can).
func checkParent(spec DiskSpec, n Node) string {
	if spec.ParentBitmap == "" {
		if spec.NoParentReason != "" {
			return spec.NoParentReason
		}
		return "no earlier backup of this disk with a dirty bitmap"
	}
	b, ok := n.Bitmap(spec.ParentBitmap)
	switch {
	case !ok:
		return fmt.Sprintf("dirty bitmap %s of the parent backup is not in the VM (restarted without it, or the image was replaced)", spec.ParentBitmap)
	case b.Inconsistent:
		return fmt.Sprintf("dirty bitmap %s is inconsistent (QEMU did not shut down cleanly)", spec.ParentBitmap)
	case !b.Recording:
		return fmt.Sprintf("dirty bitmap %s is disabled (not recording writes)", spec.ParentBitmap)
	case b.Busy:
		return fmt.Sprintf("dirty bitmap %s is in use by another operation", spec.ParentBitmap)
	case n.Size != spec.ParentSize:
		return fmt.Sprintf("disk size changed from %d to %d bytes since the parent backup", spec.ParentSize, n.Size)
	}
	return ""
}

// name makes a short QEMU object name for disk i (node names are at most
// 31 bytes).
func (s *Session) name(i int, kind string) string {
	return fmt.Sprintf("csbs-%s-%d%s", s.tag, i, kind)
}

// addOverlay creates the fleecing overlay of disk i: an empty qcow2
// image in the session dir, created by QEMU itself, whose backing is the
// disk's node. The copy-before-write job copies old data there before a
// guest write lands; reading the overlay gives the disk at the point in
// time.
func (s *Session) addOverlay(ctx context.Context, i int) error {
	d := s.disks[i]
	file := filepath.Join(s.opt.Dir, fmt.Sprintf("overlay-%d.qcow2", i))
	if err := s.runJob(ctx, s.name(i, "c1"), map[string]any{"driver": "file", "filename": file, "size": 0}); err != nil {
		return err
	}
	fnode := s.name(i, "f")
	if err := s.c.Execute(ctx, "blockdev-add", map[string]any{"driver": "file", "node-name": fnode, "filename": file}, nil); err != nil {
		return err
	}
	if err := s.runJob(ctx, s.name(i, "c2"), map[string]any{"driver": "qcow2", "file": fnode, "size": d.Node.Size}); err != nil {
		return err
	}
	onode := s.name(i, "o")
	return s.c.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": onode, "file": fnode, "backing": d.Node.Name}, nil)
}

// runJob runs a blockdev-create job to its end.
func (s *Session) runJob(ctx context.Context, id string, options map[string]any) error {
	if err := s.c.Execute(ctx, "blockdev-create", map[string]any{"job-id": id, "options": options}, nil); err != nil {
		return err
	}
	defer s.c.Execute(context.WithoutCancel(ctx), "job-dismiss", map[string]any{"id": id}, nil)
	for {
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := s.c.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
			return err
		}
		for _, j := range jobs {
			if j.ID == id && j.Status == "concluded" {
				if j.Error != "" {
					return fmt.Errorf("QEMU job %s: %s", id, j.Error)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// agent connects to the guest agent, or returns nil (and notes why) when
// there is none or it does not answer.
func (s *Session) agent(ctx context.Context) *Agent {
	path := s.opt.Agent
	if path == "none" {
		s.notes = append(s.notes, "guest agent not used (qga=none)")
		return nil
	}
	if path == "" {
		p, err := findAgent(ctx, s.c)
		if err != nil || p == "" {
			s.notes = append(s.notes, "no guest agent channel open in the VM")
			return nil
		}
		path = p
	}
	a, err := DialAgentWith(ctx, path, 5*time.Second, s.opt.Open)
	if err != nil {
		s.notes = append(s.notes, "guest agent did not answer: "+err.Error())
		return nil
	}
	s.st.Agent = path
	return a
}

// Disks returns the session's disks, in the order of Options.Disks.
func (s *Session) Disks() []Disk { return s.disks }

// ExportURI is the NBD URI of disk i's frozen view.
func (s *Session) ExportURI(i int) string {
	return "nbd+unix:///" + url.PathEscape(s.disks[i].Spec.Name) + "?socket=" + NBDSocket(s.opt.Dir)
}

// Consistency is FSConsistent or CrashConsistent.
func (s *Session) Consistency() string { return s.consistency }

// Notes are remarks for the job and the backup (no agent, raw image...).
func (s *Session) Notes() []string { return s.notes }

// QEMUVersion is the VM's QEMU version.
func (s *Session) QEMUVersion() Version { return s.c.Version }

// Gone returns a non-nil error once the VM's QMP connection has ended
// (the VM stopped or crashed).
func (s *Session) Gone() error { return s.c.Err() }

// GoneWithin is Gone after waiting up to d for the VM to be seen gone:
// when QEMU dies, the reads from its NBD export fail before its QMP
// connection is seen closed, and a failed read should be told apart from
// a dead VM.
func (s *Session) GoneWithin(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.c.Done():
	case <-t.C:
	case <-ctx.Done():
	}
	return s.c.Err()
}

// End removes everything the session added to the VM: exports, the NBD
// server, the copy-before-write jobs, the overlays and the changed-block
// bitmap copies; with committed (the backup was saved) the parents'
// bitmaps, else the new bitmaps (no backup refers to them). It keeps the
// session record when the VM could not be cleaned, for Recover.
func (s *Session) End(ctx context.Context, committed bool) error {
	start := time.Now()
	err := cleanup(ctx, s.c, s.st, committed, s.opt.Log)
	s.opt.Log.Debug("VM session ended", "socket", s.opt.Socket, "session", s.opt.ID, "committed", committed, "cleanup", time.Since(start), "err", err)
	s.c.Close()
	if err != nil && !errors.Is(err, ErrVMGone) {
		return fmt.Errorf("clean up VM %s (session kept in %s for a later try): %w", s.opt.Socket, s.opt.Dir, err)
	}
	if rerr := os.RemoveAll(s.opt.Dir); rerr != nil {
		return errors.Join(err, rerr)
	}
	return nil
}

// isMissing reports whether a QMP error says the object is already gone.
func isMissing(err error) bool {
	var qe *Error
	if !errors.As(err, &qe) {
		return false
	}
	d := strings.ToLower(qe.Desc)
	return qe.Class == "DeviceNotFound" || strings.Contains(d, "not found") || strings.Contains(d, "cannot find") || strings.Contains(d, "failed to find") ||
		strings.Contains(d, "no such") || strings.Contains(d, "not running") || strings.Contains(d, "is not active") ||
		strings.Contains(d, "does not exist")
}

// cleanup undoes what st records, tolerating what is already gone. A
// connection that ends means the VM is gone, and with it everything the
// session added except persistent bitmaps, which the next backup's stale
// sweep removes.
func cleanup(ctx context.Context, c *Conn, st *state, committed bool, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var errs []error
	do := func(what, cmd string, args map[string]any) {
		if err := c.Execute(ctx, cmd, args, nil); err != nil && !isMissing(err) {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	if st.Frozen && st.Agent != "" {
		if a, err := DialAgent(ctx, st.Agent, 5*time.Second); err == nil {
			if _, err := a.Thaw(ctx); err != nil {
				errs = append(errs, fmt.Errorf("thaw guest file systems: %w", err))
			}
			a.Close()
		} else {
			errs = append(errs, fmt.Errorf("thaw guest file systems: %w", err))
		}
	}
	for _, id := range st.Exports {
		do("remove NBD export "+id, "block-export-del", map[string]any{"id": id, "mode": "hard"})
	}
	// Exports go away asynchronously; the overlays stay busy until then.
	waitGone(ctx, c, "query-block-exports", "id", st.Exports)
	if st.NBDServer {
		do("stop the NBD server", "nbd-server-stop", nil)
	}
	for _, j := range st.Jobs {
		do("cancel copy-before-write job "+j, "block-job-cancel", map[string]any{"device": j, "force": true})
	}
	waitGone(ctx, c, "query-block-jobs", "device", st.Jobs)
	for i := len(st.Nodes) - 1; i >= 0; i-- {
		do("remove node "+st.Nodes[i], "blockdev-del", map[string]any{"node-name": st.Nodes[i]})
	}
	for _, b := range st.TempBitmaps {
		do("remove bitmap "+b.Name, "block-dirty-bitmap-remove", map[string]any{"node": b.Node, "name": b.Name})
	}
	drop := st.NewBitmaps
	if committed {
		drop = st.ParentBitmaps
	}
	for _, b := range drop {
		do("remove bitmap "+b.Name, "block-dirty-bitmap-remove", map[string]any{"node": b.Node, "name": b.Name})
	}
	err := errors.Join(errs...)
	if gone := c.Err(); gone != nil {
		log.Warn("VM went away during a backup; what csbs added went with it", "socket", st.Socket, "err", gone)
		return gone
	}
	return err
}

// waitGone polls a query until no entry's key is in ids (up to 10 s).
func waitGone(ctx context.Context, c *Conn, query, key string, ids []string) {
	if len(ids) == 0 {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var list []map[string]any
		if c.Execute(ctx, query, nil, &list) != nil {
			return
		}
		left := false
		for _, e := range list {
			for _, id := range ids {
				if e[key] == id {
					left = true
				}
			}
		}
		if !left {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Sockets lists the QMP sockets of the session records under root.
func Sockets(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("VM sessions in %s: %w", root, err)
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), stateFile))
		if err != nil {
			continue
		}
		var st state
		if json.Unmarshal(b, &st) == nil && st.Socket != "" && !seen[st.Socket] {
			seen[st.Socket] = true
			out = append(out, st.Socket)
		}
	}
	return out, nil
}

// Recover cleans up after sessions that a crash interrupted: every
// session dir under root whose record names the QMP socket socket (""
// for all) is undone, committed telling whether the session's backup was
// saved (then the parents' bitmaps go, else the new ones). A VM that is
// gone needs nothing but the files removed; a VM whose monitor does not
// answer keeps its record for a later try. Call it only when no session
// of these VMs is open.
func Recover(ctx context.Context, root, socket string, committed func(id string) (bool, error), log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("VM sessions in %s: %w", root, err)
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, stateFile))
		if errors.Is(err, os.ErrNotExist) {
			continue // being made by Begin, or made and left before anything was added
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st := &state{path: filepath.Join(dir, stateFile)}
		if err := json.Unmarshal(b, st); err != nil {
			errs = append(errs, fmt.Errorf("VM session record %s: %w", st.path, err))
			continue
		}
		if socket != "" && st.Socket != socket {
			continue
		}
		done, err := committed(st.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		c, err := Dial(dctx, st.Socket)
		cancel()
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
				log.Info("VM of an interrupted backup is gone; removing its session files", "socket", st.Socket, "session", st.ID)
				os.RemoveAll(dir)
				continue
			}
			errs = append(errs, fmt.Errorf("clean up interrupted VM backup %s: %w", st.ID, err))
			continue
		}
		err = cleanup(ctx, c, st, done, log)
		c.Close()
		if err != nil && !errors.Is(err, ErrVMGone) {
			errs = append(errs, fmt.Errorf("clean up interrupted VM backup %s in %s: %w", st.ID, st.Socket, err))
			continue
		}
		log.Info("cleaned up after an interrupted VM backup", "socket", st.Socket, "session", st.ID, "backup_saved", done)
		os.RemoveAll(dir)
	}
	return errors.Join(errs...)
}
