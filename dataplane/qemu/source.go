package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qmp"
	"github.com/volback/volback/nbd"
)

// Source is a disk of a running QEMU or qemu-storage-daemon.
type Source struct {
	// QMP is the process's QMP socket.
	QMP string
	// Node is the disk's block node name, or a device (qdev) id whose
	// inserted node is used.
	Node string
	// Name is how errors name the process ("VM 0f3c..."); default the
	// socket's path.
	Name string
}

func (s Source) who() string {
	if s.Name != "" {
		return s.Name
	}
	return "QEMU at " + s.QMP
}

// BackupOptions configures Backup. Parent and PrevBitmap come together:
// the chain's last backup and the bitmap that has recorded every change
// since it.
type BackupOptions struct {
	dataplane.BackupOptions
	// Chain names the backup chain; the bitmaps volback adds are named
	// after it, so chains to different storages never share one.
	Chain string
	// PrevBitmap is the bitmap the previous backup of the chain left
	// recording; "" (or no Parent) makes the backup full.
	PrevBitmap string
	// StagingDir holds the scratch file of what QEMU sends (private; the
	// daemon's state directory).
	StagingDir string
}

// Result is what Backup did.
type Result struct {
	Manifest *chunkstore.Manifest
	// Bitmap records every change since this backup: the next backup of
	// the chain passes it as PrevBitmap.
	Bitmap string
	// FullReason says why a backup asked to be incremental was full.
	FullReason string
	// BytesFromQEMU is what QEMU's job read from the disk and sent.
	BytesFromQEMU int64
	// QEMU is the version of the process.
	QEMU string
}

// BitmapPrefix starts the name of every bitmap volback adds.
const BitmapPrefix = "volback-"

// BitmapName is the bitmap of a chain's backup id.
func BitmapName(chain, backupID string) string { return BitmapPrefix + chain + "-" + backupID }

type blockNode struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
	DirtyBitmaps []bitmapInfo `json:"dirty-bitmaps"`
}

type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Granularity  int64  `json:"granularity"`
}

// resolve finds the source's node: a node name, else a device whose
// medium is that node.
func resolve(ctx context.Context, c *qmp.Client, name string) (*blockNode, error) {
	var nodes []blockNode
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	find := func(n string) *blockNode {
		for i := range nodes {
			if nodes[i].NodeName == n {
				return &nodes[i]
			}
		}
		return nil
	}
	if n := find(name); n != nil {
		return n, nil
	}
	var devs []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := c.Execute(ctx, "query-block", nil, &devs); err == nil {
		for _, d := range devs {
			if (d.Device == name || d.QDev == name) && d.Inserted != nil {
				if n := find(d.Inserted.NodeName); n != nil {
					return n, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("%s: no block node or device %q", c.Name, name)
}

// usable says why bitmap name on n cannot carry an incremental backup, or
// "" if it can.
func usable(n *blockNode, name string) string {
	for _, b := range n.DirtyBitmaps {
		if b.Name != name {
			continue
		}
		switch {
		case b.Inconsistent:
			return fmt.Sprintf("bitmap %s is inconsistent (QEMU stopped without saving it)", name)
		case !b.Recording:
			return fmt.Sprintf("bitmap %s is disabled: it did not record every write", name)
		case b.Busy:
			return fmt.Sprintf("bitmap %s is in use by another job", name)
		}
		return ""
	}
	return fmt.Sprintf("bitmap %s is gone from node %s (removed, or QEMU restarted with an image that cannot keep it)", name, n.NodeName)
}

// Backup takes a point-in-time backup of the source into repo. QEMU keeps
// the point in time: in one transaction it starts a new bitmap and a
// backup job (copy-before-write) that sends the disk, or with a usable
// PrevBitmap only the clusters it marks, into an NBD export volback
// serves on a socket handed over QMP (so QEMU's own NBD server, which the
// VM may be using, is left alone). What arrives is cut into chunks as any
// backup; the rest comes from Parent.
//
// PrevBitmap is never cleared by QEMU: only after the manifest is durable
// does Backup remove it. On any failure the new bitmap is removed and the
// previous one still holds every change, so nothing is ever forgotten;
// the export, the job and the NBD node are always removed.
func Backup(ctx context.Context, repo *chunkstore.Repository, src Source, opts BackupOptions) (res *Result, err error) {
	if opts.ID == "" {
		opts.ID = chunkstore.NewID()
	}
	res = &Result{}
	c, err := qmp.Dial(ctx, src.QMP, src.who())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	res.QEMU = c.Version.String()
	node, err := resolve(ctx, c, src.Node)
	if err != nil {
		return nil, err
	}
	size := node.Image.VirtualSize
	if size <= 0 {
		return nil, fmt.Errorf("%s: node %s reports no size", c.Name, node.NodeName)
	}
	persistent := node.Drv == "qcow2" // only qcow2 keeps bitmaps across restarts

	// Leftovers of this chain (an earlier run that died) go first: they
	// would only waste QEMU's memory.
	for _, b := range node.DirtyBitmaps {
		if strings.HasPrefix(b.Name, BitmapPrefix+opts.Chain+"-") && b.Name != opts.PrevBitmap && !b.Busy {
			_ = c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": b.Name}, nil)
		}
	}
	incremental := opts.Parent != nil && opts.PrevBitmap != ""
	if incremental {
		if why := usable(node, opts.PrevBitmap); why != "" {
			incremental, res.FullReason = false, why
		}
	} else if opts.Parent != nil {
		res.FullReason = "the previous backup left no bitmap in QEMU"
	}
	if incremental && opts.Parent.Size != size {
		incremental, res.FullReason = false, fmt.Sprintf("the disk is %d bytes, its last backup %d", size, opts.Parent.Size)
	}

	st, err := newStaging(opts.StagingDir, size, repo.ChunkSize())
	if err != nil {
		return nil, err
	}
	defer st.Close()

	tag := opts.ID[:12]
	sinkNode, jobID := "volback-sink-"+tag, "volback-job-"+tag
	newBitmap := BitmapName(opts.Chain, opts.ID)
	// Cleanup runs with its own time: a cancelled backup must still leave
	// QEMU as it found it.
	cctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	}
	srv := nbd.NewServer()
	srv.AddExport(&nbd.Export{Name: "sink", Backend: sink{st}})
	sctx, stopSink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSink()
	server, served, err := connectSink(ctx, c, srv, sctx, opts.StagingDir, tag)
	if err != nil {
		return nil, err
	}
	defer func() { stopSink(); <-served }()
	if err := c.Execute(ctx, "blockdev-add", map[string]any{
		"driver": "nbd", "node-name": sinkNode, "export": "sink", "server": server,
	}, nil); err != nil {
		if server["type"] == "fd" {
			x, cancel := cctx()
			_ = c.Execute(x, "closefd", map[string]any{"fdname": server["str"]}, nil)
			cancel()
		}
		return nil, err
	}
	defer func() {
		x, cancel := cctx()
		defer cancel()
		if derr := c.Execute(x, "blockdev-del", map[string]any{"node-name": sinkNode}, nil); derr != nil && err == nil {
			err = derr
		}
	}()

	events, unsubscribe := c.Subscribe(func(e qmp.Event) bool {
		if !strings.HasPrefix(e.Name, "BLOCK_JOB_") {
			return false
		}
		var d struct{ Device string }
		return json.Unmarshal(e.Data, &d) == nil && d.Device == jobID
	})
	defer unsubscribe()
	backup := map[string]any{"job-id": jobID, "device": node.NodeName, "target": sinkNode, "sync": "full", "auto-dismiss": true}
	if incremental {
		backup["sync"], backup["bitmap"], backup["bitmap-mode"] = "bitmap", opts.PrevBitmap, "never"
	}
	actions := []map[string]any{
		{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": node.NodeName, "name": newBitmap, "persistent": persistent}},
		{"type": "blockdev-backup", "data": backup},
	}
	if err := c.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return nil, err
	}
	keepNew := false
	defer func() {
		if !keepNew {
			x, cancel := cctx()
			_ = c.Execute(x, "block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": newBitmap}, nil)
			cancel()
		}
	}()
	if err := waitJob(ctx, c, jobID, size, events, opts.Progress, cctx); err != nil {
		return nil, err
	}

	// QEMU is done; what it sent becomes the backup.
	bo := opts.BackupOptions
	bo.Changed = st.changed()
	if !incremental {
		bo.Parent, bo.Changed = nil, nil
	}
	view := &overlayView{ctx: ctx, st: st, full: !incremental}
	if incremental {
		view.parent = dataplane.OpenImage(repo, opts.Parent, dataplane.ImageOptions{})
		defer view.parent.Close()
	}
	m, err := dataplane.Backup(ctx, repo, view, size, bo)
	if err != nil {
		return nil, err
	}
	res.Manifest = m
	st.mu.Lock()
	res.BytesFromQEMU = st.written - st.zeroed
	st.mu.Unlock()
	// Durable: the new bitmap takes over, the previous one goes.
	keepNew = true
	res.Bitmap = newBitmap
	if opts.PrevBitmap != "" {
		x, cancel := cctx()
		_ = c.Execute(x, "block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": opts.PrevBitmap}, nil)
		cancel()
	}
	return res, nil
}

// connectSink gets srv's sink to QEMU: one end of a socket pair passed
// with getfd where QEMU has it (qemu-system), else a Unix socket in dir,
// mode 0600, removed once QEMU is connected (qemu-storage-daemon has no
// getfd; QEMU must then run as a user that may open dir). It returns the
// server address for blockdev-add and a channel closed when serving ends.
func connectSink(ctx context.Context, c *qmp.Client, srv *nbd.Server, sctx context.Context, dir, tag string) (map[string]any, <-chan struct{}, error) {
	served := make(chan struct{})
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket pair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "nbd-sink"), os.NewFile(uintptr(fds[1]), "nbd-sink-qemu")
	defer theirs.Close()
	fdName := "volback-fd-" + tag
	err = c.SendFile(ctx, fdName, theirs)
	var qe *qmp.Error
	if err == nil {
		conn, err := net.FileConn(ours)
		ours.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("socket pair: %w", err)
		}
		go func() { _ = srv.ServeConn(sctx, conn); close(served) }()
		return map[string]any{"type": "fd", "str": fdName}, served, nil
	}
	ours.Close()
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		return nil, nil, err
	}
	path := filepath.Join(dir, ".qemu-sink-"+tag+".sock")
	l, err := nbd.Listen("unix://" + path)
	if err != nil {
		return nil, nil, err
	}
	go func() {
		defer close(served)
		stop := context.AfterFunc(sctx, func() { l.Close() })
		defer stop()
		conn, err := l.Accept()
		l.Close()
		os.Remove(path)
		if err == nil {
			_ = srv.ServeConn(sctx, conn)
		}
	}()
	return map[string]any{"type": "unix", "path": path}, served, nil
}

// waitJob waits for QEMU's backup job to end, reporting its progress; a
// cancelled ctx cancels the job and waits for it to go.
//
// Progress counts the bytes the job has sent, against its length plus the
// disk's size (an upper bound of the chunking that follows).
func waitJob(ctx context.Context, c *qmp.Client, jobID string, size int64, events <-chan qmp.Event, progress *dataplane.Progress, cctx func() (context.Context, context.CancelFunc)) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	cancelled := false
	stop := ctx.Done()
	var giveUp <-chan time.Time
	var sent int64
	report := func(length, offset int64) {
		progress.SetTotal(length + size)
		if offset > sent {
			progress.Add(offset - sent)
			sent = offset
		}
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("%s: connection lost during backup job: %w", c.Name, c.Err())
			}
			var d struct {
				Len, Offset int64
				Error       string
			}
			_ = json.Unmarshal(ev.Data, &d)
			switch ev.Name {
			case "BLOCK_JOB_COMPLETED":
				if d.Error != "" {
					return fmt.Errorf("%s: backup job failed: %s", c.Name, d.Error)
				}
				if cancelled {
					return ctx.Err()
				}
				report(d.Len, d.Len)
				return nil
			case "BLOCK_JOB_CANCELLED":
				if cancelled {
					return ctx.Err()
				}
				return fmt.Errorf("%s: backup job cancelled by someone else", c.Name)
			case "BLOCK_JOB_ERROR":
				// The job's on-*-error policy (report by default) ends it;
				// COMPLETED follows with the error.
			}
		case <-tick.C:
			if progress == nil {
				continue
			}
			var jobs []struct {
				Device      string
				Len, Offset int64
			}
			if c.Execute(ctx, "query-block-jobs", nil, &jobs) == nil {
				for _, j := range jobs {
					if j.Device == jobID {
						report(j.Len, j.Offset)
					}
				}
			}
		case <-giveUp:
			return fmt.Errorf("%s: backup job %s did not end within a minute of its cancel (%w)", c.Name, jobID, ctx.Err())
		case <-stop:
			cancelled, stop = true, nil
			giveUp = time.After(time.Minute)
			x, cancel := cctx()
			err := c.Execute(x, "block-job-cancel", map[string]any{"device": jobID, "force": true}, nil)
			cancel()
			var qe *qmp.Error
			if err != nil && !(errors.As(err, &qe) && qe.Class == "DeviceNotActive") {
				return fmt.Errorf("%s: cancel backup job: %w (%w)", c.Name, err, ctx.Err())
			}
		}
	}
}

// overlayView is the disk at the backup's instant: what QEMU sent, over
// the parent backup where it sent nothing (incremental). In a full backup
// QEMU sends every byte; a byte it did not send is an error, never a zero.
type overlayView struct {
	ctx    context.Context
	st     *staging
	parent *dataplane.Image
	full   bool
}

func (v *overlayView) ReadAt(p []byte, off int64) (int, error) {
	if v.parent != nil {
		if err := v.parent.ReadAt(v.ctx, p, off); err != nil {
			return 0, fmt.Errorf("parent backup at %d: %w", off, err)
		}
	}
	covered, err := v.st.overlay(p, off)
	if err != nil {
		return 0, err
	}
	if v.full && covered != int64(len(p)) {
		return 0, fmt.Errorf("QEMU's backup job left %d bytes of [%d, %d) unsent", int64(len(p))-covered, off, off+int64(len(p)))
	}
	return len(p), nil
}
