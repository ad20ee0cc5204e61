package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// backupActions dispatches PUT /volume-backups/{uuid}/actions.
func (a *API) backupActions(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := decodeBody(r, &body); err != nil {
		badRequest(w, "bad JSON: "+err.Error())
		return
	}
	if p, ok := body["revertVolumeFromVolumeBackup"]; ok {
		a.revertVolume(w, r, p)
		return
	}
	a.fail(w, apiErr(CodeInvalidArg, "invalid argument", `unknown action: want {"revertVolumeFromVolumeBackup":{...}}`))
}

// readyBackup loads a Ready backup and where it lives.
func (a *API) readyBackup(ctx context.Context, id string) (*inventory.VolumeBackup, *inventory.BackupStorage, *ErrorCode) {
	got, _, err := a.DB.QueryVolumeBackups(ctx, " WHERE uuid = ?", []any{id}, "", 1, 0)
	if err != nil {
		return nil, nil, apiErr(CodeInternal, "internal error", err.Error())
	}
	if len(got) == 0 || len(got[0].Refs) == 0 {
		return nil, nil, apiErr(CodeNotFound, "resource not found", "no volume backup "+id)
	}
	if got[0].Status != "Ready" {
		return nil, nil, apiErr(CodeOperationFail, "backup not ready", "volume backup "+id+" is "+got[0].Status)
	}
	bs, err := a.DB.GetBackupStorage(ctx, got[0].Refs[0].BackupStorageUUID)
	if err != nil {
		return nil, nil, apiErr(CodeNotFound, "resource not found", "the backup storage of volume backup "+id+" is gone")
	}
	return got[0], bs, nil
}

// openBackup opens the repository holding a backup and its manifest.
func (a *API) openBackup(ctx context.Context, b *inventory.VolumeBackup, bs *inventory.BackupStorage) (*chunkstore.Repository, *chunkstore.Manifest, error) {
	spec, err := refSpec(b.Refs[0], bs)
	if err != nil {
		return nil, nil, err
	}
	repo, err := a.openTarget(ctx, spec, a.TargetEnv, 0, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", spec.String(), err)
	}
	m, err := repo.LoadManifest(ctx, b.UUID)
	if err != nil {
		repo.Close()
		return nil, nil, err
	}
	return repo, m, nil
}

// revertVolume is RevertVolumeFromVolumeBackup: the volume's content
// becomes the backup's, writing only the chunks that differ. Refused
// while NBD clients are attached (they would see their disk change under
// them) unless "force" is set.
func (a *API) revertVolume(w http.ResponseWriter, r *http.Request, raw json.RawMessage) {
	var p struct {
		Force bool `json:"force"`
	}
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &p); err != nil {
			badRequest(w, "bad params: "+err.Error())
			return
		}
	}
	ctx := r.Context()
	b, bs, e := a.readyBackup(ctx, r.PathValue("uuid"))
	if e != nil {
		a.fail(w, e)
		return
	}
	vol := a.Host.Volume(b.VolumeUUID)
	if vol == nil {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "volume "+b.VolumeUUID+" of backup "+b.UUID+" is not served here"))
		return
	}
	attached := func() *ErrorCode {
		if n := a.Host.NBD.ConnectionsTo(b.VolumeUUID); n > 0 && !p.Force {
			return apiErr(CodeOperationFail, "volume in use",
				fmt.Sprintf("volume %s has %d NBD clients connected; disconnect them, or revert with \"force\": true", b.VolumeUUID, n))
		}
		return nil
	}
	if e := attached(); e != nil {
		a.fail(w, e)
		return
	}
	a.Jobs.Start(w, r, "RevertVolumeFromVolumeBackup", func(ctx context.Context, prog *dataplane.Progress) (any, *ErrorCode) {
		if e := attached(); e != nil {
			return nil, e
		}
		repo, m, err := a.openBackup(ctx, b, bs)
		if err != nil {
			return nil, apiErr(CodeOperationFail, "cannot read backup "+b.UUID, err.Error())
		}
		defer repo.Close()
		st, err := vol.Revert(ctx, repo, m, dataplane.RevertOptions{Progress: prog})
		if err != nil {
			return nil, apiErr(CodeOperationFail, "revert of volume "+b.VolumeUUID+" failed", err.Error())
		}
		v, err := a.DB.GetVolume(ctx, b.VolumeUUID)
		if errors.Is(err, inventory.ErrNotFound) {
			return map[string]any{"revert": st}, nil
		}
		if err != nil {
			return nil, apiErr(CodeInternal, "internal error", err.Error())
		}
		return map[string]any{"inventory": toVolumeInventory(v), "revert": st}, nil
	})
}
