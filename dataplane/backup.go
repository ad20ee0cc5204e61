package dataplane

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/ratelimit"
)

// BackupOptions configures one backup.
type BackupOptions struct {
	// ID is the new backup's id; empty means a fresh random one.
	ID string
	// VolumeID names the volume in the manifest.
	VolumeID string
	// Parallelism is the number of workers (parallelismDegree); 0 means
	// BackupWorkers().
	Parallelism int
	// Parent is the backup this one builds on, or nil.
	Parent *chunkstore.Manifest
	// Changed lists the extents written since Parent. With a Parent and a
	// non-nil Changed, only chunks they touch are read (incremental);
	// otherwise every chunk is read (full), still deduplicated.
	Changed []Extent
	// Meta is copied into the manifest (name, description, ...).
	Meta map[string]string
	// Progress, if set, counts the bytes read.
	Progress *Progress
	// ReadBytesPerSec, if positive, limits how fast the volume is read
	// (ZStack's volumeReadBandwidth), across all workers.
	ReadBytesPerSec int64
	// Pace, if set, runs after a worker stores a chunk of n bytes (a live
	// backup uses it to yield the disk to guest writes).
	Pace func(n int64)
	// Nice, if positive, lowers the workers' CPU priority (a live backup
	// runs beside guest I/O that must keep its speed).
	Nice int
	// Plan, if set, is the result of PlanBackup for these options,
	// computed earlier (a live backup plans while writes are paused).
	Plan *Plan
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Lease, if set, is the caller's marker for this backup (see
	// chunkstore.Repository.BeginBackup), taken before it chose Parent;
	// nil means Backup takes and releases its own.
	Lease *chunkstore.Lease
	// BeforeManifest, if set, runs once every chunk is durable and before
	// the manifest is written; an error fails the backup with no manifest
	// (a source whose own job must succeed first, as QEMU's).
	BeforeManifest func() error
}

// Plan says which chunks a backup reads.
type Plan struct {
	// ToRead lists the chunk indexes to read, ascending.
	ToRead []int
	// Incremental is set when chunks not in ToRead come from the parent.
	Incremental bool
	read        []bool
}

// PlanBackup decides which chunks a backup of a size-byte volume reads:
// with a parent and a non-nil list of changed extents, the chunks the
// extents touch, plus any chunk the parent lacks or holds at another
// length (a volume that grew re-reads its old last chunk); otherwise all.
func PlanBackup(size int64, chunkSize int, parent *chunkstore.Manifest, changed []Extent) (*Plan, error) {
	nChunks := chunkstore.ChunkCount(size, chunkSize)
	p := &Plan{ToRead: make([]int, 0, nChunks), read: make([]bool, nChunks)}
	chunkLen := func(i int) int { return int(min(int64(chunkSize), size-int64(i)*int64(chunkSize))) }
	if parent == nil || changed == nil {
		for i := range nChunks {
			p.ToRead = append(p.ToRead, i)
			p.read[i] = true
		}
		return p, nil
	}
	if parent.ChunkSize != chunkSize {
		return nil, fmt.Errorf("parent %s has chunk size %d, want %d", parent.ID, parent.ChunkSize, chunkSize)
	}
	touched, err := chunksTouched(changed, size, chunkSize, nChunks)
	if err != nil {
		return nil, err
	}
	p.Incremental = true
	for i := range nChunks {
		if touched[i] || i >= len(parent.Chunks) || parent.ChunkLen(i) != chunkLen(i) {
			p.ToRead = append(p.ToRead, i)
			p.read[i] = true
		}
	}
	return p, nil
}

// workerStats is each worker's own tally, summed after the workers end.
type workerStats struct {
	bytesRead, bytesZero, bytesNew, bytesStored int64
	read, zero, stored, dedup                   int
}

// Backup reads the volume src of the given size and writes a new backup of
// it to repo. It returns the manifest, durable in the repository.
func Backup(ctx context.Context, repo *chunkstore.Repository, src io.ReaderAt, size int64, opts BackupOptions) (*chunkstore.Manifest, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	started := now()
	if size < 0 {
		return nil, fmt.Errorf("backup of volume %s: negative size %d", opts.VolumeID, size)
	}
	id := opts.ID
	if id == "" {
		id = chunkstore.NewID()
	} else if err := chunkstore.ValidID(id); err != nil {
		return nil, fmt.Errorf("backup of volume %s: %w", opts.VolumeID, err)
	}
	// A taken id is refused before any data moves (the manifest is
	// created exclusively in the end, too).
	if taken, err := repo.HasManifest(ctx, id); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
	} else if taken {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, chunkstore.ErrBackupExists)
	}
	// Announce the backup to garbage collections (here or on other hosts)
	// before trusting any stored chunk: from now on none is deleted.
	lease := opts.Lease
	if lease == nil {
		var err error
		if lease, err = repo.BeginBackup(ctx, id); err != nil {
			return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
		}
		defer lease.ReleaseAfter(ctx)
	}
	if p := opts.Parent; p != nil {
		// The parent's chunks are reused unread: it must still exist now
		// that no collection can run, or they may be gone.
		ok, err := repo.HasManifest(ctx, p.ID)
		if err != nil {
			return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
		}
		if !ok {
			return nil, fmt.Errorf("backup %s of volume %s: parent backup %s was deleted as the backup started; the next backup reads the whole volume", id, opts.VolumeID, p.ID)
		}
	}
	chunkSize := repo.ChunkSize()
	nChunks := chunkstore.ChunkCount(size, chunkSize)
	m := &chunkstore.Manifest{
		Version:   chunkstore.ManifestVersion,
		ID:        id,
		VolumeID:  opts.VolumeID,
		Size:      size,
		ChunkSize: chunkSize,
		Mode:      chunkstore.ModeFull,
		Started:   started.UTC(),
		Meta:      opts.Meta,
		Chunks:    make([]chunkstore.Key, nChunks),
	}
	chunkLen := func(i int) int { return int(min(int64(chunkSize), size-int64(i)*int64(chunkSize))) }

	if p := opts.Parent; p != nil {
		if p.ChunkSize != chunkSize {
			return nil, fmt.Errorf("backup of volume %s: parent %s has chunk size %d, repository uses %d", opts.VolumeID, p.ID, p.ChunkSize, chunkSize)
		}
		m.Parent = p.ID
	}
	plan := opts.Plan
	if plan == nil {
		var err error
		if plan, err = PlanBackup(size, chunkSize, opts.Parent, opts.Changed); err != nil {
			return nil, fmt.Errorf("backup of volume %s: %w", opts.VolumeID, err)
		}
	}
	if plan.Incremental {
		m.Mode = chunkstore.ModeIncremental
		for i := range nChunks {
			if !plan.read[i] {
				m.Chunks[i] = opts.Parent.Chunks[i]
				m.Stats.ChunksReused++
			}
		}
	}
	toRead := plan.ToRead
	var total int64
	for _, i := range toRead {
		total += int64(chunkLen(i))
	}
	// Added to what is done already: a caller may count an earlier phase
	// (a QEMU source's transfer) on the same Progress.
	opts.Progress.SetTotal(opts.Progress.Done() + total)

	// A sparse file's holes are zeros without reading: a chunk wholly in
	// one costs neither I/O nor a zero check.
	var holes []bool
	if f, ok := src.(*os.File); ok {
		holes = holeChunks(f, size, chunkSize)
	}
	readLimit := ratelimit.NewLimiter(opts.ReadBytesPerSec)
	if opts.Parallelism <= 0 {
		opts.Parallelism = BackupWorkers()
	}
	stats := make([]workerStats, workers(opts.Parallelism, len(toRead)))
	err := forEachChunkNice(ctx, opts.Nice, opts.Parallelism, 0, toRead, repo.NewChunkBuffer, func(ctx context.Context, w, i int, buf []byte) error {
		st := &stats[w]
		off := int64(i) * int64(chunkSize)
		data := buf[:chunkLen(i)]
		if holes != nil && holes[i] {
			st.zero++
			st.bytesZero += int64(len(data))
			m.Chunks[i] = chunkstore.ZeroKey
			opts.Progress.Add(int64(len(data)))
			return nil
		}
		if err := ratelimit.Wait(ctx, readLimit, len(data)); err != nil {
			return err
		}
		if err := readFull(src, data, off); err != nil {
			return fmt.Errorf("volume %s: %w", opts.VolumeID, err)
		}
		st.read++
		st.bytesRead += int64(len(data))
		defer opts.Progress.Add(int64(len(data)))
		if chunkstore.IsZero(data) {
			st.zero++
			st.bytesZero += int64(len(data))
			m.Chunks[i] = chunkstore.ZeroKey
			return nil
		}
		k := repo.Key(data)
		m.Chunks[i] = k
		has, err := repo.HasChunk(ctx, k)
		if err != nil {
			return fmt.Errorf("volume %s offset %d: %w", opts.VolumeID, off, err)
		}
		if has {
			st.dedup++
			return nil
		}
		stored, err := repo.PutChunk(ctx, k, data)
		if err != nil {
			return fmt.Errorf("volume %s offset %d: %w", opts.VolumeID, off, err)
		}
		st.stored++
		st.bytesNew += int64(len(data))
		st.bytesStored += int64(stored)
		if opts.Pace != nil {
			opts.Pace(int64(len(data)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
	}
	for _, st := range stats {
		m.Stats.BytesRead += st.bytesRead
		m.Stats.BytesZero += st.bytesZero
		m.Stats.BytesNew += st.bytesNew
		m.Stats.BytesStored += st.bytesStored
		m.Stats.ChunksRead += st.read
		m.Stats.ChunksZero += st.zero
		m.Stats.ChunksNew += st.stored
		m.Stats.ChunksDedup += st.dedup
	}
	m.Stats.ChunksTotal = nChunks
	// Make the chunks durable before taking the finish time, so the
	// duration includes it; SaveManifest's own sync then finds nothing.
	if err := repo.Sync(ctx); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
	}
	if opts.BeforeManifest != nil {
		if err := opts.BeforeManifest(); err != nil {
			return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
		}
	}
	m.Finished = now().UTC()
	m.Stats.DurationNanos = m.Finished.Sub(m.Started).Nanoseconds()
	if err := repo.SaveManifest(ctx, m); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
	}
	return m, nil
}

// BackupWorkers is a backup's default parallelism. A worker alternates
// between the CPU (hashing, compressing) and the disk (reading the volume,
// writing and syncing the chunk), so one per CPU leaves the CPUs idle while
// chunks are written: on 2 vCPUs a 2 GiB backup takes 3.2 s with 8 workers
// where 2 take 3.8 s (lz4; 3.6 s and 4.4 s with zstd). Each holds a chunk
// buffer and, compressing, a scratch buffer of the same size.
func BackupWorkers() int { return min(32, max(8, 2*runtime.NumCPU())) }
