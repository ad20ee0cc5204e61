package qemu

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qmp"
	"github.com/volback/volback/nbd"
)

// RevertOptions configures Revert.
type RevertOptions struct {
	// SocketDir holds the Unix socket of the NBD server Revert starts in
	// QEMU when it runs none (private; the daemon's state directory).
	SocketDir   string
	Parallelism int
	Progress    *dataplane.Progress
	// WriteBytesPerSec limits the writes into the disk; 0 is no limit.
	WriteBytesPerSec int64
}

// ErrGuestRunning refuses a revert under a running guest.
var ErrGuestRunning = errors.New("the VM is running: stop or pause it first (a disk reverted under a running guest corrupts its file systems)")

// Revert makes the source's disk hold backup m: QEMU exports the disk's
// node over NBD (on its own NBD server, which Revert starts on a private
// socket and stops afterwards when QEMU ran none, or on the server the
// source names in Source.NBD), and each chunk is read, keyed with the
// repository's key and written only where it differs. Every bitmap
// volback added to the node goes, as a volume's changed-block maps are
// distrusted after a revert: the next backup of every chain is full.
func Revert(ctx context.Context, repo *chunkstore.Repository, src Source, m *chunkstore.Manifest, opts RevertOptions) (st dataplane.RevertStats, err error) {
	c, done, err := acquire(ctx, src)
	if err != nil {
		return st, err
	}
	defer done()
	var status struct{ Status string }
	if err := c.Execute(ctx, "query-status", nil, &status); err == nil && status.Status == "running" {
		return st, fmt.Errorf("%s: %w", c.Name, ErrGuestRunning)
	}
	node, err := resolve(ctx, c, src.Node)
	if err != nil {
		return st, err
	}
	if node.Image.VirtualSize != m.Size {
		return st, fmt.Errorf("%s: node %s is %d bytes, backup %s is of %d", c.Name, node.NodeName, node.Image.VirtualSize, m.ID, m.Size)
	}
	cctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	}
	tag := m.ID[:12] + fmt.Sprintf("-%x", time.Now().UnixNano()&0xffff)
	sock := src.NBD
	if sock == "" {
		sock = filepath.Join(opts.SocketDir, ".qemu-revert-"+tag+".sock")
		err := c.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}, nil)
		var qe *qmp.Error
		if errors.As(err, &qe) && strings.Contains(qe.Desc, "already running") {
			return st, fmt.Errorf("%s: QEMU runs an NBD server of its own; name its Unix socket with nbd=PATH in the volume's qmp:// URL", c.Name)
		}
		if err != nil {
			return st, err
		}
		defer func() {
			x, cancel := cctx()
			_ = c.Execute(x, "nbd-server-stop", nil, nil)
			cancel()
		}()
	}
	export := "volback-revert-" + tag
	if err := c.Execute(ctx, "block-export-add", map[string]any{
		"type": "nbd", "id": export, "node-name": node.NodeName, "name": export, "writable": true,
	}, nil); err != nil {
		return st, err
	}
	defer func() {
		x, cancel := cctx()
		defer cancel()
		if derr := removeExport(x, c, export); derr != nil && err == nil {
			err = derr
		}
	}()
	nc, err := nbd.Dial(ctx, "unix", sock, export, nbd.ClientOptions{})
	if err != nil {
		return st, fmt.Errorf("%s: export of node %s: %w", c.Name, node.NodeName, err)
	}
	defer nc.Close()
	if nc.Size() != m.Size {
		return st, fmt.Errorf("%s: export of node %s is %d bytes, backup %d", c.Name, node.NodeName, nc.Size(), m.Size)
	}

	cs := int64(m.ChunkSize)
	st.ChunksTotal = len(m.Chunks)
	opts.Progress.SetTotal(m.Size)
	var limit *rate.Limiter
	if opts.WriteBytesPerSec > 0 {
		limit = rate.NewLimiter(rate.Limit(opts.WriteBytesPerSec), int(max(cs, opts.WriteBytesPerSec)))
	}
	workers := opts.Parallelism
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	var same, written atomic.Int64
	var bytesWritten atomic.Int64
	next := atomic.Int64{}
	g, gctx := errgroup.WithContext(ctx)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			cur := make([]byte, cs)
			dec := repo.NewChunkBuffer()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(m.Chunks) {
					return nil
				}
				off := int64(i) * cs
				n := min(cs, m.Size-off)
				buf := cur[:n]
				if err := nc.ReadAt(gctx, buf, off); err != nil {
					return fmt.Errorf("read chunk %d of the disk: %w", i, err)
				}
				k := m.Chunks[i]
				have := chunkstore.ZeroKey
				if !chunkstore.IsZero(buf) {
					have = repo.Key(buf)
				}
				if have == k {
					same.Add(1)
					opts.Progress.Add(n)
					continue
				}
				if limit != nil {
					if err := limit.WaitN(gctx, int(n)); err != nil {
						return err
					}
				}
				if k.IsZero() {
					if err := nc.Zero(gctx, off, n); err != nil {
						return fmt.Errorf("zero chunk %d: %w", i, err)
					}
				} else {
					data, err := repo.GetChunk(gctx, k, dec)
					if err != nil {
						return err
					}
					if int64(len(data)) != n {
						return fmt.Errorf("chunk %d of backup %s holds %d bytes, want %d", i, m.ID, len(data), n)
					}
					dec = data[:0]
					if err := nc.WriteAt(gctx, data, off, false); err != nil {
						return fmt.Errorf("write chunk %d: %w", i, err)
					}
				}
				written.Add(1)
				bytesWritten.Add(n)
				opts.Progress.Add(n)
			}
		})
	}
	if err := g.Wait(); err != nil {
		return st, err
	}
	if err := nc.Flush(ctx); err != nil {
		return st, fmt.Errorf("%s: flush node %s: %w", c.Name, node.NodeName, err)
	}
	st.ChunksSame, st.ChunksWritten, st.BytesWritten = int(same.Load()), int(written.Load()), bytesWritten.Load()
	// The chains start over.
	for _, b := range node.DirtyBitmaps {
		if strings.HasPrefix(b.Name, BitmapPrefix) {
			if err := c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": b.Name}, nil); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// removeExport deletes a block export of ours. QEMU sees our NBD client's
// disconnect a moment after we close it, and refuses a safe delete while
// it is "still in use": it is tried again for a while, then forced (the
// only client was ours, and it is gone).
func removeExport(ctx context.Context, c *qmp.Client, id string) error {
	for i := 0; i < 40; i++ {
		err := c.Execute(ctx, "block-export-del", map[string]any{"id": id}, nil)
		var qe *qmp.Error
		if err == nil || !errors.As(err, &qe) || !strings.Contains(qe.Desc, "in use") {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.Execute(ctx, "block-export-del", map[string]any{"id": id, "mode": "hard"}, nil)
}
