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
	"golang.org/x/sys/unix"

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
	if stats, err = fill(ctx, repo, m, f, false, opts); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
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
	if stats, err = fill(ctx, repo, m, f, true, opts); err != nil {
		return stats, fmt.Errorf("restore backup %s to %s: %w", m.ID, target, err)
	}
	return stats, nil
}

// fill writes every chunk of m to f, syncs f and, unless told not to,
// reads it back and checks it.
func fill(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, f *os.File, device bool, opts RestoreOptions) (RestoreStats, error) {
	stats, err := writeChunks(ctx, repo, m, f, device, opts)
	if err != nil {
		return stats, err
	}
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("fsync: %w", err)
	}
	if !opts.SkipVerify {
		if err := verifyTarget(ctx, repo, m, f, opts); err != nil {
			return stats, err
		}
		stats.Verified = true
	}
	return stats, nil
}

// forEachChunk runs fn for chunk indexes on n workers (0 = one per CPU),
// each with its own chunk buffer from newBuf and its worker number w. It
// visits idx in order, or every index below count if idx is nil. Memory is
// n chunk buffers whatever the volume's size: the producer hands out
// indexes, never data. The first error cancels the rest.
func forEachChunk(ctx context.Context, n, count int, idx []int, newBuf func() []byte, fn func(ctx context.Context, w, i int, buf []byte) error) error {
	return forEachChunkNice(ctx, 0, n, count, idx, newBuf, fn)
}

// ioprio_set(2) arguments: who = a thread, class best-effort (2) at
// level 7, the lowest.
const (
	ioprioWhoProcess = 1
	ioprioLowest     = 3 << 13
)

// forEachChunkNice is forEachChunk with the workers' threads at the given
// nice value (0 = unchanged), so that a live backup yields the CPU to the
// guest I/O it runs beside.
func forEachChunkNice(ctx context.Context, nice, n, count int, idx []int, newBuf func() []byte, fn func(ctx context.Context, w, i int, buf []byte) error) error {
	if idx != nil {
		count = len(idx)
	}
	n = workers(n, count)
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan int, n)
	g.Go(func() error {
		defer close(jobs)
		for j := range count {
			i := j
			if idx != nil {
				i = idx[j]
			}
			select {
			case jobs <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for w := range n {
		g.Go(func() error {
			if nice != 0 {
				// The thread is ours alone from here on and is
				// discarded when the goroutine ends, so the lowered
				// priority never leaks to other goroutines.
				runtime.LockOSThread()
				_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice)
				// Its disk I/O yields too: the best-effort class at
				// its lowest level (schedulers without priorities
				// ignore this).
				_, _, _ = unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(unix.Gettid()), ioprioLowest)
			}
			buf := newBuf()
			for i := range jobs {
				if err := fn(gctx, w, i, buf); err != nil {
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

// workers returns the number of workers to run for count items: n, or one
// per CPU if n is 0, and never more than there are items.
func workers(n, count int) int {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	return max(1, min(n, count))
}

// writeChunks fetches every data chunk and writes it at its offset. Zero
// chunks are skipped on files (already holes) and written on devices.
func writeChunks(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, f *os.File, device bool, opts RestoreOptions) (RestoreStats, error) {
	opts.Progress.SetTotal(m.Size)
	var zeros []byte
	if device {
		zeros = make([]byte, m.ChunkSize)
	}
	tallies := make([]RestoreStats, workers(opts.Parallelism, len(m.Chunks)))
	newBuf := func() []byte { return make([]byte, m.ChunkSize) }
	err := forEachChunk(ctx, opts.Parallelism, len(m.Chunks), nil, newBuf, func(ctx context.Context, w, i int, buf []byte) error {
		t := &tallies[w]
		off := int64(i) * int64(m.ChunkSize)
		n := m.ChunkLen(i)
		k := m.Chunks[i]
		if k.IsZero() {
			if device {
				if _, err := f.WriteAt(zeros[:n], off); err != nil {
					return fmt.Errorf("write zeros at offset %d: %w", off, err)
				}
			}
			t.ChunksZero++
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
		t.BytesWritten += int64(n)
		t.ChunksWritten++
		opts.Progress.Add(int64(n))
		return nil
	})
	var stats RestoreStats
	for _, t := range tallies {
		stats.BytesWritten += t.BytesWritten
		stats.ChunksWritten += t.ChunksWritten
		stats.ChunksZero += t.ChunksZero
	}
	return stats, err
}

// verifyTarget re-reads the written target and checks every chunk against
// the manifest.
func verifyTarget(ctx context.Context, repo *chunkstore.Repository, m *chunkstore.Manifest, f *os.File, opts RestoreOptions) error {
	newBuf := func() []byte { return make([]byte, m.ChunkSize) }
	return forEachChunk(ctx, opts.Parallelism, len(m.Chunks), nil, newBuf, func(ctx context.Context, _, i int, buf []byte) error {
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
