package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/ratelimit"
)

// Live restore: a volume created from a backup is usable at once. Until
// a chunk has been copied from the backup, any read, write, trim or zero
// that touches it first copies it (restore on access), so clients see
// exactly the backup's data and their writes land on top of it; a
// background copy (RunRestore) fills every other chunk. Which chunks are
// done is kept in a state file, written after the data it vouches for is
// synced (on every Flush and every second of the background copy), so a
// restart resumes where it left off: a chunk the file does not mark done
// is copied again, which can only undo client writes the client never
// flushed.

// RestoreState is the state file of a live restore.
type RestoreState struct {
	BackupID  string `json:"backupId"`
	Source    string `json:"source"` // the caller's description of the repository (for resuming)
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunkSize"`
	Done      []byte `json:"done"` // bitmap, one bit per chunk
}

// ReadRestoreState reads a live restore's state file.
func ReadRestoreState(path string) (*RestoreState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st RestoreState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("restore state %s: %w", path, err)
	}
	return &st, nil
}

type liveRestore struct {
	repo   *chunkstore.Repository
	m      *chunkstore.Manifest
	path   string
	source string
	done   []atomic.Bool
	left   atomic.Int64 // chunks not done
	locks  [64]sync.Mutex
	saveMu sync.Mutex
	// failures counts chunk copies that failed (repository unreachable);
	// the background copy retries them.
	failures atomic.Int64
	// noVerify turns off the read-back of each copied chunk
	// (RestoreRunOptions.SkipVerify).
	noVerify atomic.Bool
	// chunks holds the buffers chunks are fetched into (NewChunkBuffer)
	// and read back into once written: the store reads each object
	// straight into one, so a copy allocates and clears no memory per
	// chunk (a restore's 4 MiB a chunk cleared cost it 0.2 CPU-s per
	// 2 GiB), CPU the guest running beside keeps.
	chunks sync.Pool
}

// diskMismatchError is a copied chunk that reads back from the disk other
// than written: the volume's storage does not keep what it is given, and
// writing again cannot be trusted to mend it.
type diskMismatchError struct{ err error }

func (e *diskMismatchError) Error() string { return e.err.Error() }
func (e *diskMismatchError) Unwrap() error { return e.err }

// ErrRestoring is returned by operations a volume cannot do while it is
// being restored (a backup of it, a revert).
var ErrRestoring = errors.New("the volume is being restored from a backup")

// StartRestore makes v, a new volume of the backup's size, a live
// restore of backup m: from now on it reads as the backup. statePath is
// the state file; source is kept in it for the caller to reopen the
// repository when resuming.
func (v *Volume) StartRestore(repo *chunkstore.Repository, m *chunkstore.Manifest, statePath, source string) error {
	if m.Size != v.size {
		return fmt.Errorf("volume %s is %d bytes, backup %s %d", v.ID, v.size, m.ID, m.Size)
	}
	r := newLiveRestore(repo, m, statePath, source)
	// Zero chunks need no copy: the new volume reads zeros there.
	for i, k := range m.Chunks {
		if k.IsZero() {
			r.done[i].Store(true)
			r.left.Add(-1)
		}
	}
	if err := r.save(v); err != nil {
		return err
	}
	v.restore.Store(r)
	return nil
}

// ResumeRestore continues a live restore from its state file.
func (v *Volume) ResumeRestore(repo *chunkstore.Repository, statePath string) error {
	st, err := ReadRestoreState(statePath)
	if err != nil {
		return err
	}
	m, err := repo.LoadManifest(context.Background(), st.BackupID)
	if err != nil {
		return fmt.Errorf("resume restore of volume %s: %w", v.ID, err)
	}
	if m.Size != v.size || st.Size != v.size || st.ChunkSize != m.ChunkSize || len(st.Done) < (len(m.Chunks)+7)/8 {
		return fmt.Errorf("resume restore of volume %s: state %s does not match backup %s", v.ID, statePath, m.ID)
	}
	r := newLiveRestore(repo, m, statePath, st.Source)
	for i := range m.Chunks {
		if st.Done[i/8]&(1<<(i%8)) != 0 {
			r.done[i].Store(true)
			r.left.Add(-1)
		}
	}
	v.restore.Store(r)
	return nil
}

func newLiveRestore(repo *chunkstore.Repository, m *chunkstore.Manifest, path, source string) *liveRestore {
	r := &liveRestore{repo: repo, m: m, path: path, source: source, done: make([]atomic.Bool, len(m.Chunks))}
	r.left.Store(int64(len(m.Chunks)))
	return r
}

// Restoring reports whether v is still being restored, and from which
// backup.
func (v *Volume) Restoring() (backupID string, ok bool) {
	if r := v.restore.Load(); r != nil {
		return r.m.ID, true
	}
	return "", false
}

// RestoreProgress returns the bytes copied so far and the total.
func (v *Volume) RestoreProgress() (done, total int64) {
	r := v.restore.Load()
	if r == nil {
		return v.size, v.size
	}
	for i := range r.done {
		if r.done[i].Load() {
			done += int64(r.m.ChunkLen(i))
		}
	}
	return done, v.size
}

// save writes the state file, vouching only for data already synced.
func (r *liveRestore) save(v *Volume) error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	bits := make([]byte, (len(r.done)+7)/8)
	for i := range r.done {
		if r.done[i].Load() {
			bits[i/8] |= 1 << (i % 8)
		}
	}
	if err := unix.Fdatasync(int(v.f.Fd())); err != nil {
		return fmt.Errorf("volume %s: sync: %w", v.ID, err)
	}
	b, _ := json.Marshal(RestoreState{BackupID: r.m.ID, Source: r.source, Size: r.m.Size, ChunkSize: r.m.ChunkSize, Done: bits})
	if err := writeFileAtomic(r.path, b); err != nil {
		return fmt.Errorf("volume %s: restore state: %w", v.ID, err)
	}
	return nil
}

// ensure copies every chunk of [off, off+length) that is not done yet.
func (r *liveRestore) ensure(ctx context.Context, v *Volume, off, length int64) error {
	if length <= 0 {
		return nil
	}
	cs := int64(r.m.ChunkSize)
	for i := off / cs; i*cs < off+length && i < int64(len(r.done)); i++ {
		if err := r.copyChunk(ctx, v, int(i)); err != nil {
			return err
		}
	}
	return nil
}

// copyChunk copies chunk i from the backup unless it is done already.
func (r *liveRestore) copyChunk(ctx context.Context, v *Volume, i int) error {
	if r.done[i].Load() {
		return nil
	}
	mu := &r.locks[i%len(r.locks)]
	mu.Lock()
	defer mu.Unlock()
	if r.done[i].Load() {
		return nil
	}
	cp, _ := r.chunks.Get().(*[]byte)
	if cp == nil {
		b := r.repo.NewChunkBuffer()
		cp = &b
	}
	defer r.chunks.Put(cp)
	data, err := r.repo.GetChunk(ctx, r.m.Chunks[i], *cp)
	if err == nil && len(data) != r.m.ChunkLen(i) {
		err = fmt.Errorf("chunk %s is %d bytes, want %d", r.m.Chunks[i], len(data), r.m.ChunkLen(i))
	}
	if err != nil {
		if ctx.Err() == nil { // a cancelled fetch did not fail
			r.failures.Add(1)
		}
		return fmt.Errorf("volume %s: restore of offset %d from backup %s: %w", v.ID, int64(i)*int64(r.m.ChunkSize), r.m.ID, err)
	}
	off := int64(i) * int64(r.m.ChunkSize)
	if _, err := v.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("volume %s: restore of offset %d: %w", v.ID, off, err)
	}
	// Checked as in Restore: flushed, dropped from the cache, read back
	// from the disk and hashed, before any client sees the chunk (its
	// writes wait on the chunk's lock meanwhile).
	// The fetch buffer takes the read-back: what it held is written.
	if !r.noVerify.Load() {
		if err := checkOnDisk(r.repo, v.f, false, (*cp)[:len(data)], off, r.m.Chunks[i]); err != nil {
			r.failures.Add(1)
			return &diskMismatchError{fmt.Errorf("volume %s: restore of offset %d from backup %s: %w", v.ID, off, r.m.ID, err)}
		}
	}
	r.done[i].Store(true)
	r.left.Add(-1)
	return nil
}

// ensureRestored is called by every volume operation on a range.
func (v *Volume) ensureRestored(ctx context.Context, off, length int64) error {
	if r := v.restore.Load(); r != nil {
		return r.ensure(ctx, v, off, length)
	}
	return nil
}

// RestoreRunOptions configures RunRestore.
type RestoreRunOptions struct {
	// Parallelism is the number of background copy workers; 0 means
	// RestoreWorkers(), as for a file restore: each waits on the disk
	// (its write, the flush, the read-back) far more than on the CPU, and
	// 16 instead of one per CPU (2) copied a verified 1 GiB backup in
	// 1.09-1.11 s instead of 1.44-1.51 s (BenchmarkLiveRestore). Each
	// holds one chunk buffer, for the fetch and the read-back.
	Parallelism int
	// Progress, if set, follows the bytes done.
	Progress *Progress
	// BytesPerSec, if positive, limits the background copy's reads from
	// the repository (networkReadBandwidth); client reads of chunks not
	// yet copied are not held back.
	BytesPerSec int64
	// WriteBytesPerSec, if positive, limits the background copy's writes
	// to the volume (volumeWriteBandwidth).
	WriteBytesPerSec int64
	// SkipVerify stops reading each copied chunk back from the disk
	// (from now on, on demand and in the background alike).
	SkipVerify bool
}

// RunRestore copies every chunk not yet done, with parallel workers, each
// read back from the disk and checked unless opts.SkipVerify, retrying
// failed copies (an unreachable repository) with backoff until ctx ends; a
// chunk that is corrupt or missing, or that the disk does not keep as
// written, ends it with an error, since no retry can mend it (reads of that chunk keep failing, never returning
// wrong data). When all are done it syncs the volume, removes the state file
// and the volume is an ordinary one.
func (v *Volume) RunRestore(ctx context.Context, opts RestoreRunOptions) error {
	r := v.restore.Load()
	if r == nil {
		return nil
	}
	r.noVerify.Store(opts.SkipVerify)
	parallelism, progress := opts.Parallelism, opts.Progress
	if parallelism <= 0 {
		parallelism = RestoreWorkers()
	}
	limit, writeLimit := ratelimit.NewLimiter(opts.BytesPerSec), ratelimit.NewLimiter(opts.WriteBytesPerSec)
	progress.SetTotal(v.size)
	d, _ := v.RestoreProgress()
	progress.Add(d - progress.Done())
	saver := time.NewTicker(time.Second)
	defer saver.Stop()
	backoff := 100 * time.Millisecond
	for r.left.Load() > 0 {
		var todo []int
		for i := range r.done {
			if !r.done[i].Load() {
				todo = append(todo, i)
			}
		}
		err := forEachChunk(ctx, parallelism, 0, todo, func() []byte { return nil }, func(ctx context.Context, _, i int, _ []byte) error {
			if r.done[i].Load() {
				return nil
			}
			if err := ratelimit.Wait(ctx, limit, r.m.ChunkLen(i)); err != nil {
				return err
			}
			if err := ratelimit.Wait(ctx, writeLimit, r.m.ChunkLen(i)); err != nil {
				return err
			}
			if err := r.copyChunk(ctx, v, i); err != nil {
				return err
			}
			d, _ := v.RestoreProgress()
			progress.Add(d - progress.Done())
			select {
			case <-saver.C:
				return r.save(v)
			default:
			}
			return nil
		})
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			_ = r.save(v)
			return ctx.Err()
		}
		// A chunk that is corrupt or gone stays so: retrying cannot help,
		// and the restore cannot complete.
		var corrupt *chunkstore.CorruptChunkError
		var mismatch *diskMismatchError
		if errors.As(err, &corrupt) || errors.Is(err, chunkstore.ErrNotFound) || errors.As(err, &mismatch) {
			_ = r.save(v)
			return fmt.Errorf("volume %s cannot be restored from backup %s: %w", v.ID, r.m.ID, err)
		}
		// Keep what is done, wait, and go on with the rest.
		_ = r.save(v)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
	if err := unix.Fdatasync(int(v.f.Fd())); err != nil {
		return fmt.Errorf("volume %s: sync: %w", v.ID, err)
	}
	v.restore.Store(nil)
	if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = syncDirOf(r.path)
	progress.Add(v.size - progress.Done())
	return nil
}

// RestoreFailures counts chunk copies that failed so far.
func (v *Volume) RestoreFailures() int64 {
	if r := v.restore.Load(); r != nil {
		return r.failures.Load()
	}
	return 0
}

// saveRestore persists the restore state (Flush and Close call it).
func (v *Volume) saveRestore() error {
	if r := v.restore.Load(); r != nil {
		return r.save(v)
	}
	return nil
}
