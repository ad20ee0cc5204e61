package dataplane

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/volback/volback/chunkstore"
)

// Backup modes recorded in manifests.
const (
	ModeFull        = "full"
	ModeIncremental = "incremental"
)

// BackupOptions configures one backup.
type BackupOptions struct {
	// ID is the new backup's id; empty means a fresh random one.
	ID string
	// VolumeID names the volume in the manifest.
	VolumeID string
	// Parallelism is the number of workers (parallelismDegree); 0 means
	// one per CPU.
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
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
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
	chunkSize := repo.ChunkSize()
	nChunks := chunkstore.ChunkCount(size, chunkSize)
	m := &chunkstore.Manifest{
		Version:   chunkstore.FormatVersion,
		ID:        id,
		VolumeID:  opts.VolumeID,
		Size:      size,
		ChunkSize: chunkSize,
		Mode:      ModeFull,
		Started:   started.UTC(),
		Meta:      opts.Meta,
		Chunks:    make([]chunkstore.Key, nChunks),
	}
	chunkLen := func(i int) int { return int(min(int64(chunkSize), size-int64(i)*int64(chunkSize))) }

	// Decide which chunks to read.
	toRead := make([]int, 0, nChunks)
	if p := opts.Parent; p != nil {
		if p.ChunkSize != chunkSize {
			return nil, fmt.Errorf("backup of volume %s: parent %s has chunk size %d, repository uses %d", opts.VolumeID, p.ID, p.ChunkSize, chunkSize)
		}
		m.Parent = p.ID
	}
	if opts.Parent != nil && opts.Changed != nil {
		touched, err := chunksTouched(opts.Changed, size, chunkSize, nChunks)
		if err != nil {
			return nil, fmt.Errorf("backup of volume %s: %w", opts.VolumeID, err)
		}
		m.Mode = ModeIncremental
		for i := range nChunks {
			// A chunk is reused only if the parent has it at the same
			// length: a volume that grew re-reads its old last chunk.
			if !touched[i] && i < len(opts.Parent.Chunks) && opts.Parent.ChunkLen(i) == chunkLen(i) {
				m.Chunks[i] = opts.Parent.Chunks[i]
				m.Stats.ChunksReused++
				continue
			}
			toRead = append(toRead, i)
		}
	} else {
		for i := range nChunks {
			toRead = append(toRead, i)
		}
	}
	var total int64
	for _, i := range toRead {
		total += int64(chunkLen(i))
	}
	opts.Progress.SetTotal(total)

	stats := make([]workerStats, workers(opts.Parallelism, len(toRead)))
	err := forEachChunk(ctx, opts.Parallelism, 0, toRead, repo.NewChunkBuffer, func(ctx context.Context, w, i int, buf []byte) error {
		st := &stats[w]
		off := int64(i) * int64(chunkSize)
		data := buf[:chunkLen(i)]
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
	m.Finished = now().UTC()
	m.Stats.DurationNanos = m.Finished.Sub(m.Started).Nanoseconds()
	if err := repo.SaveManifest(ctx, m); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", id, opts.VolumeID, err)
	}
	return m, nil
}
