package control

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// syncVolumeBackups is ZStack's SyncVolumeBackup (PUT
// /volume-backups/imageStore/{storageUuid}/actions with
// {"syncVolumeBackup":{}}): it reads the manifests of the storage's
// repository (or of the fsInfo target its systemTags name) and records
// every backup the inventory does not know. This is how a repository
// written by another daemon, on another host or an earlier install, is
// taken over: the repository describes itself.
func (a *API) syncVolumeBackups(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Sync       *json.RawMessage `json:"syncVolumeBackup"`
		SystemTags []string         `json:"systemTags"`
		UserTags   []string         `json:"userTags"`
	}
	if err := decodeBody(r, &body); err != nil {
		badRequest(w, "bad JSON: "+err.Error())
		return
	}
	if body.Sync == nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", `want {"syncVolumeBackup":{}}`))
		return
	}
	bs, ok := a.storageOrFail(w, r.Context(), r.PathValue("storageUuid"))
	if !ok {
		return
	}
	tags, err := ParseBackupTags(body.SystemTags)
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	spec, env, err := a.backupTarget(bs, tags)
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	a.Jobs.Start(w, r, "SyncVolumeBackup", func(ctx context.Context, prog *dataplane.Progress) (any, *ErrorCode) {
		st, err := openStoreFor(ctx, spec, env)
		if err != nil {
			return nil, apiErr(CodeOperationFail, "cannot open the backup target "+spec.String(), err.Error())
		}
		repo, err := chunkstore.Open(ctx, st)
		if err != nil {
			st.Close()
			return nil, apiErr(CodeOperationFail, "no repository at "+spec.String(), err.Error())
		}
		defer repo.Close()
		ids, err := repo.ListBackups(ctx)
		if err != nil {
			return nil, apiErr(CodeOperationFail, "cannot list the backups of "+spec.String(), err.Error())
		}
		prog.SetTotal(int64(len(ids)))
		var target string
		if spec != storageSpec(bs) {
			tj, _ := json.Marshal(spec)
			target = string(tj)
		}
		added := []any{}
		for _, bid := range ids {
			prog.Add(1)
			if _, err := a.DB.GetVolumeBackup(ctx, bid); err == nil {
				continue // known already
			} else if !errors.Is(err, inventory.ErrNotFound) {
				return nil, apiErr(CodeInternal, "internal error", err.Error())
			}
			m, err := repo.LoadManifest(ctx, bid)
			if errors.Is(err, chunkstore.ErrNotFound) {
				continue // deleted since the listing
			}
			if err != nil {
				return nil, apiErr(CodeOperationFail, "cannot read backup "+bid+" in "+spec.String(), err.Error())
			}
			md, _ := json.Marshal(metadataOf(m, float64(m.Stats.DurationNanos)/1e9, nil, target, ""))
			typ := m.Meta["volumeType"]
			if typ == "" {
				typ = "Data"
			}
			name := m.Meta["name"]
			if name == "" {
				name = "imported-" + bid[:8]
			}
			rec := &inventory.VolumeBackup{UUID: bid, VolumeUUID: m.VolumeID, Name: name, Description: m.Meta["description"],
				Type: typ, State: "Enabled", Status: "Ready", Size: m.Size, Mode: m.Mode, Metadata: string(md), Created: m.Finished}
			ref := inventory.BackupStorageRef{BackupStorageUUID: bs.UUID, InstallPath: installPath(spec, bid), Status: "Ready", Target: target}
			if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
				return nil, apiErr(CodeOperationFail, "cannot record backup "+bid, err.Error())
			}
			got, err := a.DB.GetVolumeBackup(ctx, bid)
			if err != nil {
				return nil, apiErr(CodeInternal, "internal error", "cannot read back backup "+bid+": "+err.Error())
			}
			added = append(added, toBackupInventory(got))
		}
		return map[string]any{"inventories": added}, nil
	})
}
