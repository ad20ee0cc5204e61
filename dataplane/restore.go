package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sync/errgroup"

	"github.com/volback/volback/chunkstore"
)

// RestoreOptions configures a restore.
type RestoreOptions struct {
	// Parallelism is the number of workers; 0 means one per CPU.
	Parallelism int
	// Force allows replacing an existing regular file and writing to a
	// block device.
	Force bool
	// SkipVerify skips re-reading the target after writing it.
	SkipVerify bool
	// Progress, if set, counts bytes written, then bytes verified.
	Progress *Progress
}

// RestoreStats reports what a restore did.
type RestoreStats struct {
	BytesWritten  int64 `json:"bytesWritten"`
	ChunksWritten int   `json:"chunksWritten"`
	ChunksZero    int   `json:"chunksZero"`
	Verified      bool  `json:"verified"`
}

// Restore writes backup m from repo to target: a regular file (created, or
// replaced with Force) or a block device (with Force). A file is written
// under a temporary name and renamed into place only after every chunk was
// checked, written, synced and, unless SkipVerify, re-read and compared.
func Restore(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, target string, opts RestoreOptions) (RestoreStats, error) {
	var stats RestoreStats
	if m.ChunkSize != repo.ChunkSize() {
		return stats, fmt.Errorf("restore backup %s: chunk size %d, repository uses %d", m.ID, m.ChunkSize, repo.ChunkSize())
	}
	st, err := os.Stat(target)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	if exists && !opts.Force {
		return stats, fmt.Errorf("restore backup %s: %s exists (use --force to overwrite it)", m.ID, target)
	}
	if exists && isBlockDevice(st) {
		return restoreDevice(ctx, repo, m, target, opts)
	}
	if exists && !st.Mode().IsRegular() {
		return stats, fmt.Errorf("restore backup %s: %s is neither a regular file nor a block device", m.ID, target)
	}

	dir := filepath.Dir(target)
	var sfx [6]byte
	_, _ = rand.Read(sfx[:])
	tmp := filepath.Join(dir, "."+filepath.Base(target)+".volback-"+hex.EncodeToString(sfx[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s: %w", m.ID, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// A file of the right size whose unwritten ranges are holes: zero
	// chunks cost neither I/O nor space.
	if err := f.Truncate(m.Size); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	stats, err = writeChunks(ctx, repo, m, f, false, opts)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: fsync: %w", m.ID, target, err)
	}
	if !opts.SkipVerify {
		if err := verifyTarget(ctx, repo, m, f, opts); err != nil {
			return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
		}
		stats.Verified = true
	}
	if err := f.Close(); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return stats, nil
}

func restoreDevice(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, target string, opts RestoreOptions) (RestoreStats, error) {
	var stats RestoreStats
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s: %w", m.ID, err)
	}
	defer f.Close()
	size, err := volumeSize(f)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	if size < m.Size {
		return stats, fmt.Errorf("restore backup %s: device %s holds %d bytes, the backup %d", m.ID, target, size, m.Size)
	}
	stats, err = writeChunks(ctx, repo, m, f, true, opts)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: fsync: %w", m.ID, target, err)
	}
	if !opts.SkipVerify {
		if err := verifyTarget(ctx, repo, m, f, opts); err != nil {
			return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
		}
		stats.Verified = true
	}
	return stats, nil
}

// forEachChunk runs fn for every chunk index on n workers, each with its own
// chunk-sized buffer. The first error cancels the rest.
func forEachChunk(ctx context.Context, n, nChunks, chunkSize int, fn func(ctx context.Context, i int, buf []byte) error) error {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	n = min(n, max(nChunks, 1))
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan int, n)
	g.Go(func() error {
		defer close(jobs)
		for i := range nChunks {
			select {
			case jobs <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range n {
		g.Go(func() error {
			buf := make([]byte, chunkSize)
			for i := range jobs {
				if err := fn(gctx, i, buf); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// writeChunks fetches every data chunk and writes it at its offset. Zero
// chunks are skipped on files (already holes) and written on devices.
func writeChunks(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, f *os.File, device bool, opts RestoreOptions) (RestoreStats, error) {
	var stats RestoreStats
	opts.Progress.SetTotal(m.Size)
	var zeros []byte
	if device {
		zeros = make([]byte, m.ChunkSize)
	}
	type tally struct {
		written int64
		chunks  int
		zero    int
	}
	results := make(chan tally, 1)
	var total tally
	done := make(chan struct{})
	go func() {
		for t := range results {
			total.written += t.written
			total.chunks += t.chunks
			total.zero += t.zero
		}
		close(done)
	}()
	err := forEachChunk(ctx, opts.Parallelism, len(m.Chunks), m.ChunkSize, func(ctx context.Context, i int, buf []byte) error {
		off := int64(i) * int64(m.ChunkSize)
		n := m.ChunkLen(i)
		k := m.Chunks[i]
		if k.IsZero() {
			if device {
				if _, err := f.WriteAt(zeros[:n], off); err != nil {
					return fmt.Errorf("write zeros at offset %d: %w", off, err)
				}
			}
			results <- tally{zero: 1}
			opts.Progress.Add(int64(n))
			return nil
		}
		data, err := repo.GetChunk(ctx, k, buf[:0])
		if err != nil {
			return fmt.Errorf("offset %d: %w", off, err)
		}
		if len(data) != n {
			return fmt.Errorf("chunk %s at offset %d: %d bytes, the manifest needs %d", k, off, len(data), n)
		}
		if _, err := f.WriteAt(data, off); err != nil {
			return fmt.Errorf("write chunk %s at offset %d: %w", k, off, err)
		}
		results <- tally{written: int64(n), chunks: 1}
		opts.Progress.Add(int64(n))
		return nil
	})
	close(results)
	<-done
	stats.BytesWritten, stats.ChunksWritten, stats.ChunksZero = total.written, total.chunks, total.zero
	return stats, err
}

// verifyTarget re-reads the written target and checks every chunk against
// the manifest.
func verifyTarget(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, f *os.File, opts RestoreOptions) error {
	return forEachChunk(ctx, opts.Parallelism, len(m.Chunks), m.ChunkSize, func(ctx context.Context, i int, buf []byte) error {
		off := int64(i) * int64(m.ChunkSize)
		data := buf[:m.ChunkLen(i)]
		if err := readFull(f, data, off); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		want := m.Chunks[i]
		if want.IsZero() {
			if !chunkstore.IsZero(data) {
				return fmt.Errorf("verify: chunk at offset %d should be zeros and is not", off)
			}
			return nil
		}
		if got := repo.Key(data); got != want {
			return fmt.Errorf("verify: chunk at offset %d reads back as %s, want %s", off, got, want)
		}
		return nil
	})
}
