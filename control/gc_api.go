package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// reclaimSpace is ZStack's ReclaimSpaceFromImageStore (PUT
// /backup-storage/image-store/{uuid}/actions with
// {"reclaimSpaceFromImageStore":{}}): a garbage collection of the
// storage's repository. The result's size is the bytes freed.
func (a *API) reclaimSpace(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := decodeBody(r, &body); err != nil {
		badRequest(w, "bad JSON: "+err.Error())
		return
	}
	if _, ok := body["reclaimSpaceFromImageStore"]; !ok || len(body) != 1 {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", `want {"reclaimSpaceFromImageStore":{}}`))
		return
	}
	id := r.PathValue("uuid")
	bs, err := a.DB.GetBackupStorage(r.Context(), id)
	if errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "no backup storage "+id))
		return
	} else if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	a.Jobs.Start(w, r, "ReclaimSpaceFromImageStore", func(ctx context.Context, prog *dataplane.Progress) (any, *ErrorCode) {
		rep, err := collect(ctx, bs, prog)
		if errors.Is(err, chunkstore.ErrBackupsInProgress) {
			return nil, apiErr(CodeOperationFail, "backups are running in this backup storage; reclaim space when they are done", err.Error())
		}
		if err != nil {
			return nil, apiErr(CodeOperationFail, "garbage collection of backup storage "+bs.UUID+" failed", err.Error())
		}
		a.Metrics.gcDone(rep)
		return map[string]any{"size": rep.BytesDeleted, "gc": rep}, nil
	})
}

func collect(ctx context.Context, bs *inventory.BackupStorage, prog *dataplane.Progress) (*chunkstore.GCReport, error) {
	repo, err := local.OpenRepository(ctx, bs.URL)
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	return repo.GC(ctx, chunkstore.GCOptions{Progress: func(n int) {
		if prog != nil {
			prog.SetTotal(int64(n))
			prog.Add(int64(n) - prog.Done())
		}
	}})
}

// collectEvery runs a garbage collection of every backup storage each
// interval, until ctx is done. A storage with backups running is retried
// at the next round.
func collectEvery(ctx context.Context, db *inventory.DB, m *Metrics, log *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		storages, err := db.ListBackupStorages(ctx)
		if err != nil {
			log.Error("garbage collection: cannot list backup storages", "err", err)
			continue
		}
		for _, bs := range storages {
			rep, err := collect(ctx, bs, nil)
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, chunkstore.ErrBackupsInProgress):
				log.Info("garbage collection deferred: backups running", "storage", bs.UUID)
			case err != nil:
				log.Error("garbage collection failed", "storage", bs.UUID, "err", err)
			default:
				m.gcDone(rep)
				log.Info("garbage collection", "storage", bs.UUID, "chunksDeleted", rep.ChunksDeleted,
					"bytesFreed", rep.BytesDeleted, "chunksInUse", rep.ChunksInUse, "duration", rep.Duration)
			}
		}
	}
}

// dropMarkers removes the repository markers of backups a crash left
// behind, so collections need not wait for them to go stale.
func dropMarkers(ctx context.Context, db *inventory.DB, ids []string, log *slog.Logger) {
	storages, err := db.ListBackupStorages(ctx)
	if err != nil {
		return
	}
	for _, bs := range storages {
		repo, err := local.OpenRepository(ctx, bs.URL)
		if err != nil {
			continue
		}
		for _, id := range ids {
			if err := repo.RemoveBackupMarker(ctx, id); err != nil {
				log.Warn("cannot remove an abandoned backup's marker", "storage", bs.UUID, "backup", id, "err", err)
			}
		}
		repo.Close()
	}
}
