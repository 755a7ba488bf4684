package powerloss

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const pageSize = 4096

// device is a disk with a volatile write cache: writes land in memory,
// FSYNC (what the loop driver sends for a flush or FUA) moves them to the
// durable file. After a cut the durable file never changes again, so it
// holds exactly what a power loss at that moment would have left.
type device struct {
	mu       sync.Mutex
	durable  *os.File
	size     int64
	volatile map[int64][]byte // page index → page
	cut      bool
}

func (d *device) page(i int64) ([]byte, error) {
	if p, ok := d.volatile[i]; ok {
		return p, nil
	}
	p := make([]byte, pageSize)
	if _, err := d.durable.ReadAt(p, i*pageSize); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return p, nil
}

func (d *device) readAt(dst []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for n < len(dst) && off+int64(n) < d.size {
		pos := off + int64(n)
		p, err := d.page(pos / pageSize)
		if err != nil {
			return n, err
		}
		n += copy(dst[n:min(len(dst), n+int(d.size-pos))], p[pos%pageSize:])
	}
	return n, nil
}

func (d *device) writeAt(src []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off+int64(len(src)) > d.size {
		return 0, syscall.ENOSPC
	}
	for n := 0; n < len(src); {
		pos := off + int64(n)
		i := pos / pageSize
		p, err := d.page(i)
		if err != nil {
			return n, err
		}
		if _, ok := d.volatile[i]; !ok {
			p = append([]byte(nil), p...)
			d.volatile[i] = p
		}
		n += copy(p[pos%pageSize:], src[n:])
	}
	return len(src), nil
}

func (d *device) flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil // power is gone: nothing reaches the platter any more
	}
	for i, p := range d.volatile {
		if _, err := d.durable.WriteAt(p, i*pageSize); err != nil {
			return err
		}
	}
	clear(d.volatile)
	return nil
}

type diskNode struct {
	fs.Inode
	dev *device
}

var (
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
)

func (n *diskNode) Open(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (n *diskNode) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	k, err := n.dev.readAt(dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *diskNode) Write(_ context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	k, err := n.dev.writeAt(data, off)
	return uint32(k), fs.ToErrno(err)
}

func (n *diskNode) Fsync(context.Context, fs.FileHandle, uint32) syscall.Errno {
	return fs.ToErrno(n.dev.flush())
}

func (n *diskNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(n.dev.size)
	return 0
}

func (n *diskNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.dev.size {
		return syscall.EINVAL
	}
	return n.Getattr(ctx, f, out)
}

// ctlNode cuts the power when "cut" is written to it.
type ctlNode struct {
	fs.Inode
	dev *device
}

var (
	_ fs.NodeOpener    = (*ctlNode)(nil)
	_ fs.NodeWriter    = (*ctlNode)(nil)
	_ fs.NodeGetattrer = (*ctlNode)(nil)
	_ fs.NodeSetattrer = (*ctlNode)(nil)
)

func (n *ctlNode) Open(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *ctlNode) Write(_ context.Context, _ fs.FileHandle, data []byte, _ int64) (uint32, syscall.Errno) {
	if strings.TrimSpace(string(data)) != "cut" {
		return 0, syscall.EINVAL
	}
	n.dev.mu.Lock()
	n.dev.cut = true
	n.dev.mu.Unlock()
	return uint32(len(data)), 0
}

func (n *ctlNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	return 0
}

func (n *ctlNode) Setattr(ctx context.Context, f fs.FileHandle, _ *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return n.Getattr(ctx, f, out)
}

type rootNode struct {
	fs.Inode
	dev *device
}

func (r *rootNode) OnAdd(ctx context.Context) {
	r.AddChild("disk.img", r.NewPersistentInode(ctx, &diskNode{dev: r.dev}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
	r.AddChild("ctl", r.NewPersistentInode(ctx, &ctlNode{dev: r.dev}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
}

// serve runs the FUSE side in the helper process: spec is
// "mountpoint,durable file,size".
func serve(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	size, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(parts[1], os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	dev := &device{durable: f, size: size, volatile: map[int64][]byte{}}
	srv, err := fs.Mount(parts[0], &rootNode{dev: dev}, &fs.Options{
		MountOptions: fuse.MountOptions{FsName: "powerloss", Name: "powerloss", DirectMount: true},
	})
	if err != nil {
		return err
	}
	// Unmount when the parent closes stdin or signals.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		sig <- syscall.SIGTERM
	}()
	fmt.Println("ready")
	go func() {
		<-sig
		if srv.Unmount() != nil {
			syscall.Unmount(parts[0], syscall.MNT_DETACH)
		}
	}()
	srv.Wait()
	return nil
}
