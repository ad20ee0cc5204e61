package control

import (
	"context"
	"encoding/json"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// copyParams are the parameters of ZStack's copies between backup
// storages; the bandwidth limits are volback's, for the network legs.
type copyParams struct {
	Src                   string      `json:"srcBackupStorageUuid"`
	Dst                   string      `json:"dstBackupStorageUuid"`
	NetworkReadBandwidth  json.Number `json:"networkReadBandwidth"`
	NetworkWriteBandwidth json.Number `json:"networkWriteBandwidth"`
}

// syncBackupCopy is SyncBackupFromImageStoreBackupStorage (PUT
// /volume-backups/{uuid}/actions): the backup's copy on
// srcBackupStorageUuid is copied to dstBackupStorageUuid, which gains a
// backupStorageRef.
func (a *API) syncBackupCopy(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p copyParams
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	return a.copyJob(ctx, c.Path("uuid"), p.Src, p.Dst, p)
}

// recoverBackupCopy is RecoverBackupFromImageStoreBackupStorage: the copy
// on dstBackupStorageUuid (the remote one) is copied back to
// srcBackupStorageUuid.
func (a *API) recoverBackupCopy(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p copyParams
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	return a.copyJob(ctx, c.Path("uuid"), p.Dst, p.Src, p)
}

// copyJob checks a copy of backup id from storage from to storage to and
// returns the job that makes it.
func (a *API) copyJob(ctx context.Context, id, from, to string, p copyParams) (JobFunc, error) {
	if from == "" || to == "" {
		return nil, errInvalid("srcBackupStorageUuid and dstBackupStorageUuid are required")
	}
	if from == to {
		return nil, errInvalid("the source and destination backup storages are the same (%s)", from)
	}
	readBPS, err := bandwidthParam("networkReadBandwidth", p.NetworkReadBandwidth)
	if err != nil {
		return nil, err
	}
	writeBPS, err := bandwidthParam("networkWriteBandwidth", p.NetworkWriteBandwidth)
	if err != nil {
		return nil, err
	}
	src, err := a.readyBackup(ctx, id, from)
	if err != nil {
		return nil, err
	}
	dst, spec, env, err := a.storageTarget(ctx, to)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		inv, st, err := a.copyBackup(ctx, src, dst, spec, env, readBPS, writeBPS, prog)
		if err != nil {
			return nil, err
		}
		return map[string]any{"inventory": inv, "copy": st}, nil
	}, nil
}

// storageTarget loads a backup storage and where its backups go: its url,
// or the fsInfo target of its system tags.
func (a *API) storageTarget(ctx context.Context, id string) (*inventory.BackupStorage, target.Spec, target.Env, error) {
	bs, err := a.storage(ctx, id)
	if err != nil {
		return nil, target.Spec{}, target.Env{}, err
	}
	var tags []string
	_ = json.Unmarshal([]byte(bs.SystemTags), &tags)
	bt, err := ParseBackupTags(tags)
	if err != nil {
		return nil, target.Spec{}, target.Env{}, errTag(err)
	}
	spec, env, err := a.backupTarget(bs, bt)
	if err != nil {
		return nil, target.Spec{}, target.Env{}, errTag(err)
	}
	return bs, spec, env, nil
}

// copyBackup copies one backup copy to a storage's target and records the
// new copy.
func (a *API) copyBackup(ctx context.Context, src *backupCopy, dst *inventory.BackupStorage, spec target.Spec, env target.Env,
	readBPS, writeBPS int64, prog *dataplane.Progress) (backupInventory, chunkstore.CopyStats, error) {
	var st chunkstore.CopyStats
	from, err := a.openRepo(ctx, src.spec, a.TargetEnv, target.RepoOptions{Create: createFor(src.spec), ReadBytesPerSec: readBPS})
	if err != nil {
		return backupInventory{}, st, errFailed("cannot open the backup target "+src.spec.String(), err)
	}
	defer from.Close()
	to, err := a.openRepo(ctx, spec, env, target.RepoOptions{Create: createFor(spec), WriteBytesPerSec: writeBPS})
	if err != nil {
		return backupInventory{}, st, errFailed("cannot open the backup target "+spec.String(), err)
	}
	defer to.Close()
	a.log().Info("copying backup", "backup", src.b.UUID, "from", src.spec.String(), "to", spec.String())
	_, st, err = chunkstore.CopyBackup(ctx, from, to, src.b.UUID, chunkstore.CopyOptions{Progress: func(done, total int) {
		if prog != nil {
			prog.SetTotal(int64(total))
			prog.Add(int64(done) - prog.Done())
		}
	}})
	if err != nil {
		return backupInventory{}, st, errFailed("copy of backup "+src.b.UUID+" to "+spec.String()+" failed", err)
	}
	ref := inventory.BackupStorageRef{VolumeBackupUUID: src.b.UUID, BackupStorageUUID: dst.UUID,
		InstallPath: installPath(spec, src.b.UUID), Status: inventory.StatusReady, Target: refTarget(spec, dst)}
	if err := a.DB.AddVolumeBackupRef(ctx, ref); err != nil {
		return backupInventory{}, st, errFailed("cannot record the copy", err)
	}
	a.log().Info("backup copied", "backup", src.b.UUID, "to", spec.String(), "chunksSent", st.ChunksSent,
		"chunksPresent", st.ChunksPresent, "bytesSent", st.BytesSent)
	got, err := a.DB.GetVolumeBackup(ctx, src.b.UUID)
	if err != nil {
		return backupInventory{}, st, err
	}
	return toBackupInventory(got), st, nil
}
