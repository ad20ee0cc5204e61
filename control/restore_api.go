package control

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qemu"
)

// backupCopy is one copy of a Ready backup: the record, the storage the
// copy is on, and the target holding it.
type backupCopy struct {
	b    *inventory.VolumeBackup
	bs   *inventory.BackupStorage
	spec target.Spec
}

// readyBackup loads a Ready backup and its copy on storageUUID, or its
// first copy on a storage that still exists when storageUUID is "".
func (a *API) readyBackup(ctx context.Context, id, storageUUID string) (*backupCopy, error) {
	got, err := a.backup(ctx, id)
	if err != nil {
		return nil, err
	}
	if got.Status != inventory.StatusReady {
		return nil, errRefused("backup not ready", "volume backup %s is %s", id, got.Status)
	}
	for _, ref := range got.Refs {
		if storageUUID != "" && ref.BackupStorageUUID != storageUUID {
			continue
		}
		bs, err := a.DB.GetBackupStorage(ctx, ref.BackupStorageUUID)
		if isNotFound(err) && storageUUID == "" {
			continue
		}
		if err != nil {
			return nil, notFoundOr(err, "backup storage %s of volume backup %s is gone", ref.BackupStorageUUID, id)
		}
		spec, err := refSpec(ref, bs)
		if err != nil {
			return nil, err
		}
		return &backupCopy{b: got, bs: bs, spec: spec}, nil
	}
	if storageUUID != "" {
		return nil, errNotFound("volume backup %s has no copy on backup storage %s", id, storageUUID)
	}
	return nil, errNotFound("no copy of volume backup %s is on a backup storage", id)
}

// openBackup opens the repository holding a backup copy and its manifest.
func (a *API) openBackup(ctx context.Context, cp *backupCopy) (*chunkstore.Repository, *chunkstore.Manifest, error) {
	repo, err := a.openRepo(ctx, cp.spec, a.TargetEnv, target.RepoOptions{Create: createFor(cp.spec)})
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", cp.spec.String(), err)
	}
	m, err := repo.LoadManifest(ctx, cp.b.UUID)
	if err != nil {
		repo.Close()
		return nil, nil, err
	}
	return repo, m, nil
}

// revertVolume is RevertVolumeFromVolumeBackup (PUT
// /volume-backups/{uuid}/actions, {"revertVolumeFromVolumeBackup":{}}):
// the volume's content becomes the backup's, writing only the chunks that
// differ. Refused while NBD clients are attached (they would see their
// disk change under them) unless "force" is set.
func (a *API) revertVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p revertParams
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	return a.revertJob(ctx, c.Path("uuid"), p)
}

// revertParams are RevertVolumeFromVolumeBackup's and RevertVmFromVmBackup's.
type revertParams struct {
	Force bool `json:"force"`
	// The manual spells it backupStrogeUuid; both are taken.
	BackupStorageUUID    string      `json:"backupStorageUuid"`
	BackupStrogeUUID     string      `json:"backupStrogeUuid"`
	VolumeWriteBandwidth json.Number `json:"volumeWriteBandwidth"`
}

// revertJob checks the revert of a backup's volume and returns its job.
func (a *API) revertJob(ctx context.Context, id string, p revertParams) (JobFunc, error) {
	writeBPS, err := bandwidthParam("volumeWriteBandwidth", p.VolumeWriteBandwidth)
	if err != nil {
		return nil, err
	}
	cp, err := a.readyBackup(ctx, id, cmp.Or(p.BackupStorageUUID, p.BackupStrogeUUID))
	if err != nil {
		return nil, err
	}
	b := cp.b
	if vrec, err := a.DB.GetVolume(ctx, b.VolumeUUID); err == nil && isQEMUPath(vrec.Path) {
		return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
			repo, m, err := a.openBackup(ctx, cp)
			if err != nil {
				return nil, errFailed("cannot read backup "+b.UUID, err)
			}
			defer repo.Close()
			st, err := a.qemuRevert(ctx, vrec, repo, m, prog, writeBPS)
			if errors.Is(err, qemu.ErrGuestRunning) {
				return nil, errRefused("VM running", "%v", err)
			}
			if err != nil {
				return nil, errFailed("revert of volume "+b.VolumeUUID+" failed", err)
			}
			return map[string]any{"inventory": toVolumeInventory(vrec), "revert": st}, nil
		}, nil
	}
	vol := a.Host.Volume(b.VolumeUUID)
	if vol == nil {
		return nil, errNotFound("volume %s of backup %s is not served here", b.VolumeUUID, b.UUID)
	}
	const doing = `revert it, or revert with "force": true`
	if err := a.Host.refuseAttached(b.VolumeUUID, doing, p.Force); err != nil {
		return nil, err
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		if err := a.Host.refuseAttached(b.VolumeUUID, doing, p.Force); err != nil {
			return nil, err
		}
		repo, m, err := a.openBackup(ctx, cp)
		if err != nil {
			return nil, errFailed("cannot read backup "+b.UUID, err)
		}
		defer repo.Close()
		// Checked on the disk unless forced beside attached clients,
		// whose writes would read as damage.
		st, err := vol.Revert(ctx, repo, m, dataplane.RevertOptions{Progress: prog, WriteBytesPerSec: writeBPS, Verify: !p.Force})
		if err != nil {
			return nil, errFailed("revert of volume "+b.VolumeUUID+" failed", err)
		}
		v, err := a.DB.GetVolume(ctx, b.VolumeUUID)
		if isNotFound(err) {
			return map[string]any{"revert": st}, nil
		}
		if err != nil {
			return nil, err
		}
		return map[string]any{"inventory": toVolumeInventory(v), "revert": st}, nil
	}, nil
}

// restoreSource is what a live restore's state file records to reopen
// its repository after a restart.
type restoreSource struct {
	BackupUUID  string      `json:"backupUuid"`
	StorageUUID string      `json:"backupStorageUuid"`
	Target      target.Spec `json:"target"`
	// ReadBPS and WriteBPS are the background copy's limits
	// (networkReadBandwidth, volumeWriteBandwidth).
	ReadBPS     int64 `json:"networkReadBandwidth,omitempty"`
	WriteBPS    int64 `json:"volumeWriteBandwidth,omitempty"`
	Parallelism int   `json:"parallelismDegree,omitempty"`
}

// createVolumeFromBackup is CreateDataVolumeFromVolumeBackup (POST
// /volumes/data-volume/from/volume-template/{backupUuid}): a new volume
// holding the backup, exported at once in live-restore mode. The job
// follows the background copy and ends with the volume's inventory when
// it is complete.
func (a *API) createVolumeFromBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p struct {
		Name              string      `json:"name"`
		Description       string      `json:"description"`
		ResourceUUID      string      `json:"resourceUuid"`
		BackupStorageUUID string      `json:"backupStorageUuid"`
		ReadBPS           json.Number `json:"networkReadBandwidth"`
		WriteBPS          json.Number `json:"volumeWriteBandwidth"`
	}
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	tags, err := ParseBackupTags(c.SystemTags())
	if err != nil {
		return nil, errTag(err)
	}
	if p.Name == "" {
		return nil, errInvalid("name is required")
	}
	readBPS, err := bandwidthParam("networkReadBandwidth", p.ReadBPS)
	if err != nil {
		return nil, err
	}
	writeBPS, err := bandwidthParam("volumeWriteBandwidth", p.WriteBPS)
	if err != nil {
		return nil, err
	}
	id, err := resourceID(p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	cp, err := a.readyBackup(ctx, c.Path("backupUuid"), p.BackupStorageUUID)
	if err != nil {
		return nil, err
	}
	b, bs, spec := cp.b, cp.bs, cp.spec
	if _, err := a.DB.GetVolume(ctx, id); err == nil {
		return nil, errInvalid("volume %s exists", id)
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		repo, m, err := a.openBackup(ctx, cp)
		if err != nil {
			return nil, errFailed("cannot read backup "+b.UUID, err)
		}
		statePath := a.Host.restoreStatePath(id)
		var path string
		fail := func(desc string, err error) (any, error) {
			repo.Close()
			_ = a.Host.CloseVolume(id)
			_ = a.DB.DeleteVolume(context.WithoutCancel(ctx), id)
			if path != "" {
				os.Remove(path)
			}
			os.Remove(statePath)
			return nil, errFailed(desc, err)
		}
		if err := os.MkdirAll(filepath.Dir(statePath), 0o700); err != nil {
			return fail("cannot create the volume", err)
		}
		if path, err = a.Host.createVolumeFile(id, m.Size); err != nil {
			return fail("cannot create the volume", err)
		}
		src, _ := json.Marshal(restoreSource{BackupUUID: b.UUID, StorageUUID: bs.UUID, Target: spec, ReadBPS: readBPS, WriteBPS: writeBPS, Parallelism: tags.Parallelism})
		v, err := a.Host.OpenVolume(id, path, func(v *dataplane.Volume) error {
			return v.StartRestore(repo, m, statePath, string(src))
		})
		if err != nil {
			return fail("cannot export the volume", err)
		}
		// Recorded once exported: a volume a client finds is one it can
		// attach.
		// CreateDataVolumeFromVolumeBackup makes a data volume, whatever
		// the backed-up volume was.
		rec := &inventory.Volume{UUID: id, Name: p.Name, Path: path, Size: m.Size, Type: inventory.VolumeData,
			State: inventory.StateEnabled, Status: inventory.StatusRestoring}
		if err := a.DB.AddVolume(ctx, rec); err != nil {
			return fail("cannot record the volume", err)
		}
		a.log().Info("volume exported, restoring from backup", "volume", id, "backup", b.UUID, "target", spec.String())
		err = v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: tags.Parallelism, Progress: prog, BytesPerSec: readBPS, WriteBytesPerSec: writeBPS})
		if err != nil {
			// The daemon is stopping: the state file lets the next start
			// resume; the repository stays open until the volume closes.
			return nil, errFailed("restore of volume "+id+" interrupted; it resumes when the daemon starts again", err)
		}
		repo.Close()
		if err := a.DB.SetVolumeStatus(ctx, id, inventory.StatusReady); err != nil {
			return nil, err
		}
		if rec, err = a.DB.GetVolume(ctx, id); err != nil {
			return nil, err
		}
		return map[string]any{"inventory": toVolumeInventory(rec)}, nil
	}, nil
}

// resumeRestores continues the live restores a stop interrupted: each
// volume with a state file is opened from its backup's repository and
// exported, and its copy goes on in the background.
func (a *API) resumeRestores(ctx context.Context, vols []*inventory.Volume) map[string]bool {
	resumed := map[string]bool{}
	for _, rec := range vols {
		statePath := a.Host.restoreStatePath(rec.UUID)
		st, err := dataplane.ReadRestoreState(statePath)
		if err != nil {
			continue
		}
		resumed[rec.UUID] = true
		go func(rec *inventory.Volume) {
			var src restoreSource
			if err := json.Unmarshal([]byte(st.Source), &src); err != nil {
				a.log().Error("cannot resume restore: bad state", "volume", rec.UUID, "err", err)
				return
			}
			backoff := time.Second
			for {
				repo, err := a.openRepo(ctx, src.Target, a.TargetEnv, target.RepoOptions{Create: createFor(src.Target)})
				if err == nil {
					_, err = a.Host.OpenVolume(rec.UUID, rec.Path, func(v *dataplane.Volume) error {
						return v.ResumeRestore(repo, statePath)
					})
					if err != nil {
						repo.Close()
					} else {
						a.log().Info("resuming restore", "volume", rec.UUID, "backup", src.BackupUUID)
						v := a.Host.Volume(rec.UUID)
						if err := v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: src.Parallelism, BytesPerSec: src.ReadBPS, WriteBytesPerSec: src.WriteBPS}); err != nil {
							return // stopping; the state file stays
						}
						repo.Close()
						_ = a.DB.SetVolumeStatus(context.WithoutCancel(ctx), rec.UUID, inventory.StatusReady)
						a.log().Info("restore complete", "volume", rec.UUID, "backup", src.BackupUUID)
						return
					}
				}
				a.log().Warn("cannot resume restore yet; retrying", "volume", rec.UUID, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
			}
		}(rec)
	}
	return resumed
}
