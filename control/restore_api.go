package control

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// readyBackup loads a Ready backup and where it lives.
func (a *API) readyBackup(ctx context.Context, id string) (*inventory.VolumeBackup, *inventory.BackupStorage, error) {
	got, err := a.backup(ctx, id)
	if err == nil && len(got.Refs) == 0 {
		err = errNotFound("no volume backup %s", id)
	}
	if err != nil {
		return nil, nil, err
	}
	if got.Status != inventory.StatusReady {
		return nil, nil, errRefused("backup not ready", "volume backup %s is %s", id, got.Status)
	}
	bs, err := a.DB.GetBackupStorage(ctx, got.Refs[0].BackupStorageUUID)
	if err != nil {
		return nil, nil, notFoundOr(err, "the backup storage of volume backup %s is gone", id)
	}
	return got, bs, nil
}

// openBackup opens the repository holding a backup and its manifest.
func (a *API) openBackup(ctx context.Context, b *inventory.VolumeBackup, bs *inventory.BackupStorage) (*chunkstore.Repository, *chunkstore.Manifest, error) {
	spec, err := refSpec(b.Refs[0], bs)
	if err != nil {
		return nil, nil, err
	}
	repo, err := a.openRepo(ctx, spec, a.TargetEnv, target.RepoOptions{Create: createFor(spec)})
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

// revertVolume is RevertVolumeFromVolumeBackup (PUT
// /volume-backups/{uuid}/actions, {"revertVolumeFromVolumeBackup":{}}):
// the volume's content becomes the backup's, writing only the chunks that
// differ. Refused while NBD clients are attached (they would see their
// disk change under them) unless "force" is set.
func (a *API) revertVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p struct {
		Force bool `json:"force"`
	}
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	b, bs, err := a.readyBackup(ctx, c.Path("uuid"))
	if err != nil {
		return nil, err
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
		repo, m, err := a.openBackup(ctx, b, bs)
		if err != nil {
			return nil, errFailed("cannot read backup "+b.UUID, err)
		}
		defer repo.Close()
		st, err := vol.Revert(ctx, repo, m, dataplane.RevertOptions{Progress: prog})
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
	// ReadBPS is the background copy's limit (networkReadBandwidth).
	ReadBPS     int64 `json:"networkReadBandwidth,omitempty"`
	Parallelism int   `json:"parallelismDegree,omitempty"`
}

// createVolumeFromBackup is CreateDataVolumeFromVolumeBackup (POST
// /volumes/data-volume/from/volume-template/{backupUuid}): a new volume
// holding the backup, exported at once in live-restore mode. The job
// follows the background copy and ends with the volume's inventory when
// it is complete.
func (a *API) createVolumeFromBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p struct {
		Name         string      `json:"name"`
		Description  string      `json:"description"`
		ResourceUUID string      `json:"resourceUuid"`
		ReadBPS      json.Number `json:"networkReadBandwidth"`
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
	id, err := resourceID(p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	b, bs, err := a.readyBackup(ctx, c.Path("backupUuid"))
	if err != nil {
		return nil, err
	}
	if _, err := a.DB.GetVolume(ctx, id); err == nil {
		return nil, errInvalid("volume %s exists", id)
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		spec, err := refSpec(b.Refs[0], bs)
		if err != nil {
			return nil, err
		}
		repo, m, err := a.openBackup(ctx, b, bs)
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
		typ := b.Type
		if typ == "" {
			typ = inventory.VolumeData
		}
		rec := &inventory.Volume{UUID: id, Name: p.Name, Path: path, Size: m.Size, Type: typ,
			State: inventory.StateEnabled, Status: inventory.StatusRestoring}
		if err := a.DB.AddVolume(ctx, rec); err != nil {
			return fail("cannot record the volume", err)
		}
		src, _ := json.Marshal(restoreSource{BackupUUID: b.UUID, StorageUUID: bs.UUID, Target: spec, ReadBPS: readBPS, Parallelism: tags.Parallelism})
		v, err := a.Host.OpenVolume(id, path, func(v *dataplane.Volume) error {
			return v.StartRestore(repo, m, statePath, string(src))
		})
		if err != nil {
			return fail("cannot export the volume", err)
		}
		a.log().Info("volume exported, restoring from backup", "volume", id, "backup", b.UUID, "target", spec.String())
		err = v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: tags.Parallelism, Progress: prog, BytesPerSec: readBPS})
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
						if err := v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: src.Parallelism, BytesPerSec: src.ReadBPS}); err != nil {
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
