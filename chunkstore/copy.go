package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// copySyncEvery is how many chunks a copy sends between durability
// barriers.
const copySyncEvery = 16

// CopyOptions configures CopyBackup.
type CopyOptions struct {
	// Parallelism is how many chunks are in flight; 0 means one per CPU.
	Parallelism int
	// Progress, if set, hears of every chunk done and the number of
	// distinct chunks to do.
	Progress func(done, total int)
}

// CopyStats says what a copy moved.
type CopyStats struct {
	// Chunks is the backup's distinct stored chunks; ChunksSent of them
	// were sent, ChunksPresent the destination had already.
	Chunks        int   `json:"chunks"`
	ChunksSent    int   `json:"chunksSent"`
	ChunksPresent int   `json:"chunksPresent"`
	BytesRead     int64 `json:"bytesRead"` // raw bytes of every chunk read from the source
	BytesSent     int64 `json:"bytesSent"` // encoded bytes written to the destination
	// AlreadyCopied is set when the destination held the manifest: nothing
	// was read or sent.
	AlreadyCopied bool `json:"alreadyCopied"`
}

// CopyBackup copies backup id from src to dst: each chunk is read from src
// and checked against its key, keyed again with dst's seeds (repositories
// keep their own), sent only if dst lacks it, and the manifest is written
// last, once every chunk is durable. It runs under a backup marker in dst,
// so no collection deletes the new chunks before the manifest names them.
//
// A copy is idempotent and resumable: one that died midway leaves chunks
// and no manifest, and running it again sends only what dst still lacks.
// If dst holds the manifest already, nothing moves.
func CopyBackup(ctx context.Context, src, dst *Repository, id string, opts CopyOptions) (*Manifest, CopyStats, error) {
	var st CopyStats
	m, err := src.LoadManifest(ctx, id)
	if err != nil {
		return nil, st, fmt.Errorf("copy of backup %s: %w", id, err)
	}
	if m.ChunkSize != dst.ChunkSize() {
		return nil, st, fmt.Errorf("copy of backup %s: chunks of %d bytes, %s uses %d", id, m.ChunkSize, dst.Location(), dst.ChunkSize())
	}
	if have, err := dst.LoadManifest(ctx, id); err == nil {
		if have.VolumeID != m.VolumeID || have.Size != m.Size || len(have.Chunks) != len(m.Chunks) {
			return nil, st, fmt.Errorf("copy of backup %s: %s holds another backup under that id (volume %s, %d bytes)", id, dst.Location(), have.VolumeID, have.Size)
		}
		st.AlreadyCopied = true
		return have, st, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, st, fmt.Errorf("copy of backup %s: %w", id, err)
	}
	lease, err := dst.BeginBackup(ctx, id)
	if err != nil {
		return nil, st, fmt.Errorf("copy of backup %s: %w", id, err)
	}
	defer lease.ReleaseAfter(ctx)

	// Each distinct chunk once, whatever how many places use it.
	var keys []Key
	seen := map[Key]bool{}
	for _, k := range m.Chunks {
		if !k.IsZero() && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	st.Chunks = len(keys)
	mapped := make([]Key, len(keys))
	n := opts.Parallelism
	if n <= 0 {
		n = CPUs()
	}
	var done, sent, present atomic.Int64
	var read, written atomic.Int64
	var progressMu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan int)
	g.Go(func() error {
		defer close(work)
		for i := range keys {
			select {
			case work <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range min(n, max(len(keys), 1)) {
		g.Go(func() error {
			buf := src.NewChunkBuffer()
			for i := range work {
				if err := lease.Err(); err != nil {
					return fmt.Errorf("its marker in %s cannot be refreshed: %w", dst.Location(), err)
				}
				data, err := src.GetChunk(gctx, keys[i], buf)
				if err != nil {
					return err
				}
				read.Add(int64(len(data)))
				k := dst.Key(data)
				mapped[i] = k
				has, err := dst.HasChunk(gctx, k)
				if err != nil {
					return err
				}
				if has {
					present.Add(1)
				} else {
					w, err := dst.PutChunk(gctx, k, data)
					if err != nil {
						return err
					}
					written.Add(int64(w))
					// Make progress durable now and then, so a copy
					// killed midway resumes from there (the local
					// driver renames its chunks into place at Sync).
					if sent.Add(1)%copySyncEvery == 0 {
						if err := dst.Sync(gctx); err != nil {
							return err
						}
					}
				}
				if cap(data) > cap(buf) {
					buf = data[:0]
				}
				d := done.Add(1)
				if opts.Progress != nil {
					progressMu.Lock()
					opts.Progress(int(d), len(keys))
					progressMu.Unlock()
				}
			}
			return nil
		})
	}
	err = g.Wait()
	st.ChunksSent, st.ChunksPresent = int(sent.Load()), int(present.Load())
	st.BytesRead, st.BytesSent = read.Load(), written.Load()
	if err != nil {
		return nil, st, fmt.Errorf("copy of backup %s from %s to %s: %w", id, src.Location(), dst.Location(), err)
	}
	remap := make(map[Key]Key, len(keys))
	for i, k := range keys {
		remap[k] = mapped[i]
	}
	out := *m
	out.Chunks = make([]Key, len(m.Chunks))
	for i, k := range m.Chunks {
		if !k.IsZero() {
			k = remap[k]
		}
		out.Chunks[i] = k
	}
	out.Meta = make(map[string]string, len(m.Meta)+1)
	for k, v := range m.Meta {
		out.Meta[k] = v
	}
	out.Meta["copiedFrom"] = src.Location()
	if err := dst.SaveManifest(ctx, &out); err != nil {
		return nil, st, fmt.Errorf("copy of backup %s: %w", id, err)
	}
	return &out, st, nil
}
