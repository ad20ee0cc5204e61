package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"
)

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Parallelism is the number of chunks checked at once; 0 means one
	// per CPU.
	Parallelism int
	// OnTotal, if set, is called once with the number of bytes to check.
	OnTotal func(bytes int64)
	// OnProgress, if set, is called with each chunk's decoded size as it
	// is checked.
	OnProgress func(bytes int64)
}

// BadChunk is a chunk that is missing or does not match its key, with every
// backup that needs it.
type BadChunk struct {
	Key     Key      `json:"key"`
	Backups []string `json:"backups"`
	Error   string   `json:"error"`
	Missing bool     `json:"missing"`
}

// VerifyReport is Verify's result.
type VerifyReport struct {
	Backups    int        `json:"backups"`
	Chunks     int        `json:"chunks"`
	Bytes      int64      `json:"bytes"`
	Bad        []BadChunk `json:"bad"`
	BadBackups []string   `json:"badBackups"`
	// BadManifests are the backups whose manifest cannot be read: their
	// chunks are not checked.
	BadManifests []BadManifest `json:"badManifests,omitempty"`
}

// OK reports whether every chunk checked out.
func (r *VerifyReport) OK() bool { return len(r.Bad) == 0 && len(r.BadManifests) == 0 }

// Verify reads every chunk named by the given backups (all backups if ids
// is empty), decodes it and checks it against its key. Bad chunks are
// collected in the report, not returned as errors; an error means the
// check itself could not run (a manifest unreadable, the context done).
func (r *Repository) Verify(ctx context.Context, ids []string, opts VerifyOptions) (*VerifyReport, error) {
	listed := len(ids) == 0
	if listed {
		var err error
		if ids, err = r.ListBackups(ctx); err != nil {
			return nil, err
		}
	}
	var badManifests []BadManifest
	type use struct {
		backups []string
		size    int
	}
	uses := make(map[Key]*use)
	var order []Key
	var total int64
	checked := 0
	for _, id := range ids {
		m, err := r.LoadManifest(ctx, id)
		switch {
		case listed && errors.Is(err, ErrNotFound):
			continue // deleted since the listing
		case errors.Is(err, ErrBadManifest):
			// Named, and the others still verified.
			badManifests = append(badManifests, BadManifest{ID: id, Error: err.Error()})
			continue
		case err != nil:
			return nil, err
		}
		checked++
		for i, k := range m.Chunks {
			if k.IsZero() {
				continue
			}
			u := uses[k]
			if u == nil {
				u = &use{size: m.ChunkLen(i)}
				uses[k] = u
				order = append(order, k)
				total += int64(u.size)
			}
			if len(u.backups) == 0 || u.backups[len(u.backups)-1] != id {
				u.backups = append(u.backups, id)
			}
		}
	}
	if opts.OnTotal != nil {
		opts.OnTotal(total)
	}
	rep := &VerifyReport{Backups: checked, Chunks: len(order), Bytes: total, BadManifests: badManifests}
	n := opts.Parallelism
	if n <= 0 {
		n = runtime.NumCPU()
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	keys := make(chan Key, n)
	g.Go(func() error {
		defer close(keys)
		for _, k := range order {
			select {
			case keys <- k:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range n {
		g.Go(func() error {
			buf := r.NewChunkBuffer()
			for k := range keys {
				_, err := r.GetChunk(gctx, k, buf)
				if err != nil && gctx.Err() != nil {
					return gctx.Err()
				}
				if err != nil {
					var ce *CorruptChunkError
					if !errors.As(err, &ce) && !errors.Is(err, ErrNotFound) && IsTransient(err) {
						return fmt.Errorf("verify: %w", err)
					}
					mu.Lock()
					rep.Bad = append(rep.Bad, BadChunk{
						Key: k, Backups: uses[k].backups, Error: err.Error(),
						Missing: errors.Is(err, ErrNotFound),
					})
					mu.Unlock()
				}
				if opts.OnProgress != nil {
					opts.OnProgress(int64(uses[k].size))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	bad := make(map[string]bool)
	for _, b := range rep.Bad {
		for _, id := range b.Backups {
			bad[id] = true
		}
	}
	for id := range bad {
		rep.BadBackups = append(rep.BadBackups, id)
	}
	sort.Strings(rep.BadBackups)
	sort.Slice(rep.Bad, func(i, j int) bool { return rep.Bad[i].Key.String() < rep.Bad[j].Key.String() })
	return rep, nil
}
