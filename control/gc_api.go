package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// reclaimSpace is ZStack's ReclaimSpaceFromImageStore (PUT
// /backup-storage/image-store/{uuid}/actions with
// {"reclaimSpaceFromImageStore":{}}): a garbage collection of the
// storage's repository and of every target its backups went to. The
// result's size is the bytes freed; a target that could not be collected
// is named in skippedTargets.
func (a *API) reclaimSpace(ctx context.Context, c *apiCall) (JobFunc, error) {
	bs, err := a.storage(ctx, c.Path("uuid"))
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		rep, skipped, err := a.collectStorage(ctx, bs, prog)
		if errors.Is(err, chunkstore.ErrBackupsInProgress) {
			return nil, errFailed("backups are running in this backup storage; reclaim space when they are done", err)
		}
		if err != nil {
			return nil, errFailed("garbage collection of backup storage "+bs.UUID+" failed", err)
		}
		a.Metrics.gcDone(rep)
		return map[string]any{"size": rep.BytesDeleted, "gc": rep, "skippedTargets": skipped}, nil
	}, nil
}

// skippedTarget is a target a collection could not collect, and why.
type skippedTarget struct {
	Target string `json:"target"`
	Error  string `json:"error"`
}

// collectStorage collects every target of a storage (its url and the
// fsInfo targets its backups went to) and sums the reports. The storage's
// own repository failing fails the collection; another target that
// cannot be collected (unreachable, or with backups running) is skipped
// and reported, so it never blocks the others: it is tried again next
// time.
func (a *API) collectStorage(ctx context.Context, bs *inventory.BackupStorage, prog *dataplane.Progress) (*chunkstore.GCReport, []skippedTarget, error) {
	sum := &chunkstore.GCReport{}
	skipped := []skippedTarget{}
	own := storageSpec(bs)
	for _, spec := range storageTargets(ctx, a.DB, bs) {
		rep, err := a.collect(ctx, spec, prog)
		if err != nil && spec == own {
			return sum, skipped, fmt.Errorf("%s: %w", spec.String(), err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return sum, skipped, ctx.Err()
			}
			a.log().Warn("garbage collection skips a target", "storage", bs.UUID, "target", spec.String(), "err", err)
			skipped = append(skipped, skippedTarget{Target: spec.String(), Error: err.Error()})
			continue
		}
		sum.Add(rep)
	}
	return sum, skipped, nil
}

func (a *API) collect(ctx context.Context, spec target.Spec, prog *dataplane.Progress) (*chunkstore.GCReport, error) {
	repo, err := a.openRepo(ctx, spec, a.TargetEnv, target.RepoOptions{})
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	var tmp string // the mark's runs, if any, stay private with the daemon's state
	if a.Host != nil {
		tmp = a.Host.StateDir
	}
	return repo.GC(ctx, chunkstore.GCOptions{TempDir: tmp, Progress: func(n int) {
		if prog != nil {
			prog.SetTotal(int64(n))
			prog.Add(int64(n) - prog.Done())
		}
	}})
}

// collectEvery runs a garbage collection of every backup storage each
// interval, until ctx is done. A storage with backups running is retried
// at the next round.
func (a *API) collectEvery(ctx context.Context, interval time.Duration) {
	log := a.log()
	every(ctx, interval, func() {
		storages, err := a.DB.ListBackupStorages(ctx)
		if err != nil {
			log.Error("garbage collection: cannot list backup storages", "err", err)
			return
		}
		for _, bs := range storages {
			rep, _, err := a.collectStorage(ctx, bs, nil)
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, chunkstore.ErrBackupsInProgress):
				log.Info("garbage collection deferred: backups running", "storage", bs.UUID)
			case err != nil:
				log.Error("garbage collection failed", "storage", bs.UUID, "err", err)
			default:
				a.Metrics.gcDone(rep)
				log.Info("garbage collection", "storage", bs.UUID, "chunksDeleted", rep.ChunksDeleted,
					"bytesFreed", rep.BytesDeleted, "chunksInUse", rep.ChunksInUse, "tempsRemoved", rep.TempsRemoved, "duration", rep.Duration)
			}
		}
	})
}
