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
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
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
	// NBD is the Unix socket of an NBD server the process already runs
	// (Revert exports the disk on it); "" when it runs none.
	NBD string
	// Agent is the host side of the VM's guest agent channel (qemu-ga);
	// with it, backups freeze the guest's file systems around their
	// instant and are application-consistent.
	Agent string
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
	// PeakStaged is the most QEMU had sent that was not cut yet.
	PeakStaged int64
	// QEMU is the version of the process.
	QEMU string
	// Consistency is "application" when the guest's file systems were
	// frozen at the instant, else "crash"; ConsistencyNote says why a
	// freeze was not had.
	Consistency, ConsistencyNote string
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

// Probe connects to the source's QEMU and returns the disk's size.
func Probe(ctx context.Context, src Source) (int64, error) {
	c, done, err := acquire(ctx, src)
	if err != nil {
		return 0, err
	}
	defer done()
	n, err := resolve(ctx, c, src.Node)
	if err != nil {
		return 0, err
	}
	return n.Image.VirtualSize, nil
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
func Backup(ctx context.Context, repo *chunkstore.Repository, src Source, opts BackupOptions) (*Result, error) {
	rs, err := BackupGroup(ctx, repo, []Member{{Source: src, Options: opts}})
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// Member is one disk of a group backup.
type Member struct {
	Source  Source
	Options BackupOptions
}

// disk is one member on its way through a group backup.
type disk struct {
	m           Member
	node        *blockNode
	size        int64
	incremental bool
	st          *staging
	sinkNode    string
	jobID       string
	newBitmap   string
	res         *Result
	jobDone     chan struct{} // closed when QEMU's job ended; jobErr says how
	jobErr      error
}

// Flow control of a streamed full backup: QEMU's job pauses when this
// much is staged in memory and not yet cut (unless a chunk reader waits on
// it; at least 8 chunks), and resumes at half. What QEMU has in flight
// when it pauses comes on top (tens of MiB at disk speed).
const stagedHigh = 32 << 20

// inFlight is how many copies QEMU's full backup job runs at once.
const inFlight = 8

// flowControl pauses and resumes QEMU's job so the staging of a full
// backup stays bounded, whatever the disk's size. It never pauses the job
// while a reader waits for a chunk, so it cannot deadlock.
func (d *disk) flowControl(ctx context.Context, c *qmp.Client) {
	high := max(stagedHigh, 8*d.st.chunkSize)
	d.st.mu.Lock()
	d.st.high = high
	d.st.mu.Unlock()
	paused := false
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.jobDone:
			return
		case <-t.C:
		case <-d.st.nudge:
		}
		d.st.mu.Lock()
		pending, waiting := d.st.pending, d.st.waiting
		d.st.mu.Unlock()
		switch {
		case !paused && pending > high && waiting == 0:
			if c.Execute(ctx, "block-job-pause", map[string]any{"device": d.jobID}, nil) == nil {
				paused = true
			}
		case paused && (pending < high/2 || waiting > 0):
			if c.Execute(ctx, "block-job-resume", map[string]any{"device": d.jobID}, nil) == nil {
				paused = false
			}
		}
	}
}

// BackupGroup backs up several disks of one QEMU process at one instant:
// every member's bitmap and backup job start in one QMP transaction; one
// job failing cancels the others. Each
// member then becomes a backup of its own, as Backup makes. The previous
// bitmaps are removed only when every member's manifest is durable.
func BackupGroup(ctx context.Context, repo *chunkstore.Repository, members []Member) (rs []*Result, err error) {
	if len(members) == 0 {
		return nil, errors.New("no disks to back up")
	}
	src := members[0].Source
	for _, m := range members[1:] {
		if m.Source.QMP != src.QMP {
			return nil, fmt.Errorf("the disks of one instant must be in one QEMU process (%s and %s)", src.QMP, m.Source.QMP)
		}
	}
	c, done, err := acquire(ctx, src)
	if err != nil {
		return nil, err
	}
	defer done()
	// Cleanup runs with its own time: a cancelled backup must still leave
	// QEMU as it found it.
	cctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	}
	var disks []*disk
	// added: the transaction made the new bitmaps; keepNew: the backups
	// are durable and they take over. Otherwise they go.
	added, keepNew := false, false
	defer func() {
		if !added || keepNew {
			return
		}
		x, cancel := cctx()
		defer cancel()
		for _, d := range disks {
			_ = c.Execute(x, "block-dirty-bitmap-remove", map[string]any{"node": d.node.NodeName, "name": d.newBitmap}, nil)
		}
	}()
	seen := map[string]bool{}
	for _, m := range members {
		d, cleanup, err := prepareDisk(ctx, c, repo, m, cctx)
		defer cleanup()
		if err != nil {
			return nil, err
		}
		if seen[d.node.NodeName] {
			return nil, fmt.Errorf("%s: node %s given twice", c.Name, d.node.NodeName)
		}
		seen[d.node.NodeName] = true
		disks = append(disks, d)
	}

	jobs := map[string]bool{}
	for _, d := range disks {
		jobs[d.jobID] = true
	}
	events, unsubscribe := c.Subscribe(func(e qmp.Event) bool {
		if !strings.HasPrefix(e.Name, "BLOCK_JOB_") {
			return false
		}
		var d struct{ Device string }
		return json.Unmarshal(e.Data, &d) == nil && jobs[d.Device]
	})
	defer unsubscribe()
	var actions []map[string]any
	for _, d := range disks {
		backup := map[string]any{"job-id": d.jobID, "device": d.node.NodeName, "target": d.sinkNode, "sync": "full", "auto-dismiss": true}
		if d.incremental {
			backup["sync"], backup["bitmap"], backup["bitmap-mode"] = "bitmap", d.m.Options.PrevBitmap, "never"
		}
		if !d.incremental {
			// Few copies in flight (each up to 1 MiB), so a pause of the
			// job takes effect within a few MiB (x-perf: QEMU 6.0 on).
			backup["x-perf"] = map[string]any{"max-workers": inFlight}
		}
		if bps := d.m.Options.ReadBytesPerSec; bps > 0 {
			// volumeReadBandwidth: QEMU's job is what reads the disk.
			backup["speed"] = bps
		}
		actions = append(actions,
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.node.NodeName, "name": d.newBitmap, "persistent": d.node.Drv == "qcow2"}},
			map[string]any{"type": "blockdev-backup", "data": backup})
	}
	// One transaction is one instant: QEMU drains and runs every action
	// in it together. (Grouped completion cannot be asked for: QEMU 7.2
	// refuses it beside block-dirty-bitmap-add; waitJobs cancels the
	// other jobs when one fails instead.)
	args := map[string]any{"actions": actions}
	thaw, consistency, note := freeze(ctx, src, c.Name)
	err = c.Execute(ctx, "transaction", args, nil)
	var qe *qmp.Error
	if errors.As(err, &qe) && strings.Contains(qe.Desc, "x-perf") {
		// A QEMU without x-perf: the same, without it.
		for _, a := range actions {
			if data, ok := a["data"].(map[string]any); ok {
				delete(data, "x-perf")
			}
		}
		err = c.Execute(ctx, "transaction", args, nil)
	}
	thaw() // the instant is taken (or not): the guest writes on
	if err != nil {
		return nil, err
	}
	added = true
	for _, d := range disks {
		d.res.Consistency, d.res.ConsistencyNote = consistency, note
	}
	var total int64
	byJob := map[string]*disk{}
	for _, d := range disks {
		total += d.size
		byJob[d.jobID] = d
		d.jobDone = make(chan struct{})
	}
	// A full backup is cut into chunks while QEMU sends it, its staging
	// drained as it goes (flow control pauses QEMU's job when it runs too
	// far ahead); an incremental one, whose clusters may come in any
	// order until the job ends, after.
	// A stream that fails cancels the jobs (nothing would drain their
	// staging: flow control would hold them paused for ever), and its
	// error is the backup's.
	jctx, stopJobs := context.WithCancel(ctx)
	defer stopJobs()
	var streams errgroup.Group
	var streamErr error
	var streamMu sync.Mutex
	sctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	for _, d := range disks {
		if !d.incremental {
			streams.Go(func() error {
				err := d.chunk(sctx, repo, true)
				if err != nil {
					streamMu.Lock()
					if streamErr == nil {
						streamErr = err
					}
					streamMu.Unlock()
					stopJobs()
				}
				return err
			})
			go d.flowControl(sctx, c)
		}
	}
	werr := waitJobs(jctx, c, jobs, total, events, members[0].Options.Progress, cctx, func(job string, err error) {
		if d := byJob[job]; d != nil {
			d.jobErr = err
			close(d.jobDone)
			d.st.end()
		}
	})
	for _, d := range disks { // jobs that never said they ended
		select {
		case <-d.jobDone:
		default:
			d.jobErr = fmt.Errorf("%s: backup job %s: no end reported", c.Name, d.jobID)
			close(d.jobDone)
			d.st.end()
		}
	}
	if werr != nil {
		stopStreams()
		_ = streams.Wait()
		streamMu.Lock()
		defer streamMu.Unlock()
		if streamErr != nil && ctx.Err() == nil {
			return nil, streamErr
		}
		return nil, werr
	}
	if err := streams.Wait(); err != nil {
		return nil, err
	}
	// QEMU is done; what it sent becomes the incremental backups.
	for _, d := range disks {
		if d.incremental {
			if err := d.chunk(ctx, repo, false); err != nil {
				return nil, err
			}
		}
		rs = append(rs, d.res)
	}
	// Durable: the new bitmaps take over; every other bitmap of the chain
	// goes (the previous one, and leftovers of runs that died). Never
	// before: a backup that fails leaves the chain's bitmap as it was.
	keepNew = true
	x, cancel := cctx()
	defer cancel()
	for _, d := range disks {
		d.res.Bitmap = d.newBitmap
		for _, b := range d.node.DirtyBitmaps {
			if strings.HasPrefix(b.Name, BitmapPrefix+d.m.Options.Chain+"-") && b.Name != d.newBitmap {
				_ = c.Execute(x, "block-dirty-bitmap-remove", map[string]any{"node": d.node.NodeName, "name": b.Name}, nil)
			}
		}
	}
	return rs, nil
}

// freezeTimeout bounds the guest agent's freeze: a guest that does not
// answer in time gives a crash-consistent backup, not a stalled one.
const freezeTimeout = 30 * time.Second

// freeze asks the guest agent, if the source has one, to freeze the
// guest's file systems. It returns the function that thaws them (to call
// right after the instant, whatever happened) and the consistency the
// backup will have, with the reason when it is only crash-consistent.
func freeze(ctx context.Context, src Source, who string) (thaw func(), consistency, note string) {
	thaw = func() {}
	if src.Agent == "" {
		return thaw, "crash", "no guest agent channel"
	}
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	defer cancel()
	ag, err := qmp.DialAgent(fctx, src.Agent, who+" guest agent")
	if err != nil {
		return thaw, "crash", fmt.Sprintf("guest agent: %v", err)
	}
	var n int
	if err := ag.Execute(fctx, "guest-fsfreeze-freeze", nil, &n); err != nil {
		// A freeze that failed halfway may have frozen some: thaw.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeTimeout)
		_ = ag.Execute(tctx, "guest-fsfreeze-thaw", nil, nil)
		cancel()
		ag.Close()
		return thaw, "crash", fmt.Sprintf("guest-fsfreeze-freeze: %v", err)
	}
	return func() {
		defer ag.Close()
		for i := 0; i < 3; i++ {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeTimeout)
			err := ag.Execute(tctx, "guest-fsfreeze-thaw", nil, nil)
			cancel()
			if err == nil {
				return
			}
		}
	}, "application", ""
}

// prepareDisk resolves a member's node, decides full or incremental, and
// sets up its staging and its sink node in QEMU. cleanup undoes what was
// set up, whatever err says.
func prepareDisk(ctx context.Context, c *qmp.Client, repo *chunkstore.Repository, m Member, cctx func() (context.Context, context.CancelFunc)) (d *disk, cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	opts := &m.Options
	if opts.ID == "" {
		opts.ID = chunkstore.NewID()
	}
	d = &disk{m: m, res: &Result{QEMU: c.Version.String()}}
	if d.node, err = resolve(ctx, c, m.Source.Node); err != nil {
		return nil, cleanup, err
	}
	if d.size = d.node.Image.VirtualSize; d.size <= 0 {
		return nil, cleanup, fmt.Errorf("%s: node %s reports no size", c.Name, d.node.NodeName)
	}
	// Marked in the repository before anything of it is trusted: no
	// collection deletes the parent's chunks or ours meanwhile.
	if opts.Lease == nil {
		lease, err := repo.BeginBackup(ctx, opts.ID)
		if err != nil {
			return nil, cleanup, err
		}
		opts.Lease = lease
		undo = append(undo, func() { lease.ReleaseAfter(ctx) })
	}
	d.m = m
	d.incremental = opts.Parent != nil && opts.PrevBitmap != ""
	if d.incremental {
		if why := usable(d.node, opts.PrevBitmap); why != "" {
			d.incremental, d.res.FullReason = false, why
		}
	} else if opts.Parent != nil {
		d.res.FullReason = "the previous backup left no bitmap in QEMU"
	}
	if d.incremental && opts.Parent.Size != d.size {
		d.incremental, d.res.FullReason = false, fmt.Sprintf("the disk is %d bytes, its last backup %d", d.size, opts.Parent.Size)
	}
	if d.st, err = newStaging(opts.StagingDir, d.size, repo.ChunkSize()); err != nil {
		return nil, cleanup, err
	}
	if !d.incremental {
		d.st.inMemory() // streamed: before QEMU sends its first byte
	}
	undo = append(undo, func() { d.st.Close() })

	tag := opts.ID[:12]
	d.sinkNode, d.jobID = "volback-sink-"+tag, "volback-job-"+tag
	d.newBitmap = BitmapName(opts.Chain, opts.ID)
	srv := nbd.NewServer()
	srv.AddExport(&nbd.Export{Name: "sink", Backend: sink{d.st}})
	sctx, stopSink := context.WithCancel(context.WithoutCancel(ctx))
	server, served, err := connectSink(ctx, c, srv, sctx, opts.StagingDir, tag)
	if err != nil {
		stopSink()
		return nil, cleanup, err
	}
	undo = append(undo, func() { stopSink(); <-served })
	if err := c.Execute(ctx, "blockdev-add", map[string]any{
		"driver": "nbd", "node-name": d.sinkNode, "export": "sink", "server": server,
	}, nil); err != nil {
		if server["type"] == "fd" {
			x, cancel := cctx()
			_ = c.Execute(x, "closefd", map[string]any{"fdname": server["str"]}, nil)
			cancel()
		}
		return nil, cleanup, err
	}
	undo = append(undo, func() {
		x, cancel := cctx()
		defer cancel()
		_ = c.Execute(x, "blockdev-del", map[string]any{"node-name": d.sinkNode}, nil)
	})
	return d, cleanup, nil
}

// chunk turns what QEMU sent for d into its backup; streamed, it runs
// beside QEMU's job, each chunk cut once QEMU sent all of it, and the
// manifest waits for the job's success.
func (d *disk) chunk(ctx context.Context, repo *chunkstore.Repository, stream bool) error {
	opts := d.m.Options
	bo := opts.BackupOptions
	bo.Meta = map[string]string{}
	for k, v := range opts.Meta {
		bo.Meta[k] = v
	}
	if d.res.FullReason != "" {
		bo.Meta["fullReason"] = d.res.FullReason
	}
	bo.Meta["consistency"] = d.res.Consistency
	if d.res.ConsistencyNote != "" {
		bo.Meta["consistencyNote"] = d.res.ConsistencyNote
	}
	bo.ReadBytesPerSec = 0 // the limit is QEMU's job's speed; the staging file is local scratch
	bo.Changed = d.st.changed()
	if !d.incremental {
		bo.Parent, bo.Changed = nil, nil
	}
	view := &overlayView{ctx: ctx, st: d.st, full: !d.incremental, stream: stream}
	bo.BeforeManifest = func() error {
		select {
		case <-d.jobDone:
			return d.jobErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if d.incremental {
		view.parent = dataplane.OpenImage(repo, opts.Parent, dataplane.ImageOptions{})
		defer view.parent.Close()
	}
	m, err := dataplane.Backup(ctx, repo, view, d.size, bo)
	if err != nil {
		return err
	}
	d.res.Manifest = m
	d.st.mu.Lock()
	d.res.BytesFromQEMU = d.st.written - d.st.zeroed
	d.res.PeakStaged = d.st.peak
	d.st.mu.Unlock()
	return nil
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

// waitJobs waits for QEMU's backup jobs to end, reporting their progress;
// a cancelled ctx cancels them and waits for them to go. The first job to
// fail fails the wait, once every job has ended (a grouped transaction
// cancels the others).
//
// Progress counts the bytes the jobs have sent, against their length plus
// the disks' size (an upper bound of the chunking that follows).
func waitJobs(ctx context.Context, c *qmp.Client, jobs map[string]bool, size int64, events <-chan qmp.Event, progress *dataplane.Progress, cctx func() (context.Context, context.CancelFunc), onEnd func(job string, err error)) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	cancelled := false
	stop := ctx.Done()
	var giveUp <-chan time.Time
	var sent int64
	lengths, offsets := map[string]int64{}, map[string]int64{}
	report := func() {
		var l, o int64
		for id := range jobs {
			l, o = l+lengths[id], o+offsets[id]
		}
		progress.SetTotal(l + size)
		if o > sent {
			progress.Add(o - sent)
			sent = o
		}
	}
	running := len(jobs)
	var failure error
	for running > 0 {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("%s: connection lost during the backup jobs: %w", c.Name, c.Err())
			}
			var d struct {
				Device      string
				Len, Offset int64
				Error       string
			}
			_ = json.Unmarshal(ev.Data, &d)
			switch ev.Name {
			case "BLOCK_JOB_COMPLETED":
				running--
				if d.Error != "" {
					onEnd(d.Device, fmt.Errorf("%s: backup job of %s failed: %s", c.Name, d.Device, d.Error))
				} else {
					onEnd(d.Device, nil)
				}
				if d.Error != "" && failure == nil {
					failure = fmt.Errorf("%s: backup job of %s failed: %s", c.Name, d.Device, d.Error)
					// The others are of no use now: cancel them.
					x, cancel := cctx()
					for id := range jobs {
						if id != d.Device {
							_ = c.Execute(x, "block-job-cancel", map[string]any{"device": id, "force": true}, nil)
						}
					}
					cancel()
				}
				lengths[d.Device], offsets[d.Device] = d.Len, d.Len
				report()
			case "BLOCK_JOB_CANCELLED":
				running--
				onEnd(d.Device, fmt.Errorf("%s: backup job %s cancelled", c.Name, d.Device))
				if failure == nil && !cancelled && len(jobs) == 1 {
					failure = fmt.Errorf("%s: backup job %s cancelled by someone else", c.Name, d.Device)
				} else if failure == nil && !cancelled {
					failure = fmt.Errorf("%s: backup job %s cancelled by someone else", c.Name, d.Device)
				}
			case "BLOCK_JOB_ERROR":
				// The job's on-*-error policy (report by default) ends it;
				// COMPLETED follows with the error.
			}
		case <-tick.C:
			if progress == nil {
				continue
			}
			var list []struct {
				Device      string
				Len, Offset int64
			}
			if c.Execute(ctx, "query-block-jobs", nil, &list) == nil {
				for _, j := range list {
					if jobs[j.Device] {
						lengths[j.Device], offsets[j.Device] = j.Len, j.Offset
					}
				}
				report()
			}
		case <-giveUp:
			return fmt.Errorf("%s: backup jobs did not end within a minute of their cancel (%w)", c.Name, ctx.Err())
		case <-stop:
			cancelled, stop = true, nil
			giveUp = time.After(time.Minute)
			x, cancel := cctx()
			for id := range jobs {
				err := c.Execute(x, "block-job-cancel", map[string]any{"device": id, "force": true}, nil)
				var qe *qmp.Error
				if err != nil && !(errors.As(err, &qe) && qe.Class == "DeviceNotActive") && failure == nil {
					failure = fmt.Errorf("%s: cancel backup job %s: %w", c.Name, id, err)
				}
			}
			cancel()
		}
	}
	if cancelled {
		return ctx.Err()
	}
	return failure
}

// overlayView is the disk at the backup's instant: what QEMU sent, over
// the parent backup where it sent nothing (incremental). In a full backup
// QEMU sends every byte; a byte it did not send is an error, never a zero.
type overlayView struct {
	ctx    context.Context
	st     *staging
	parent *dataplane.Image
	full   bool
	stream bool // wait for QEMU to send each range; drop it once read
}

func (v *overlayView) ReadAt(p []byte, off int64) (int, error) {
	if v.stream {
		if err := v.st.waitCovered(v.ctx, off, off+int64(len(p))); err != nil {
			return 0, err
		}
		defer v.st.consume(off, off+int64(len(p)))
	}
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
