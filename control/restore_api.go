package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
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
	got, err := a.DB.GetVolumeBackup(ctx, id)
	if errors.Is(err, inventory.ErrNotFound) || (err == nil && len(got.Refs) == 0) {
		return nil, nil, apiErr(CodeNotFound, "resource not found", "no volume backup "+id)
	}
	if err != nil {
		return nil, nil, apiErr(CodeInternal, "internal error", err.Error())
	}
	if got.Status != "Ready" {
		return nil, nil, apiErr(CodeOperationFail, "backup not ready", "volume backup "+id+" is "+got.Status)
	}
	bs, err := a.DB.GetBackupStorage(ctx, got.Refs[0].BackupStorageUUID)
	if err != nil {
		return nil, nil, apiErr(CodeNotFound, "resource not found", "the backup storage of volume backup "+id+" is gone")
	}
	return got, bs, nil
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

func restoreStatePath(stateDir, volID string) string {
	return filepath.Join(stateDir, "restore", volID+".json")
}

// createVolumeFromBackup is CreateDataVolumeFromVolumeBackup (POST
// /volumes/data-volume/from/volume-template/{backupUuid}): a new volume
// holding the backup, exported at once in live-restore mode. The job
// follows the background copy and ends with the volume's inventory when
// it is complete.
func (a *API) createVolumeFromBackup(w http.ResponseWriter, r *http.Request) {
	var p struct {
		Name         string      `json:"name"`
		Description  string      `json:"description"`
		ResourceUUID string      `json:"resourceUuid"`
		ReadBPS      json.Number `json:"networkReadBandwidth"`
	}
	req, ok := parseAPIRequest(w, r, &p)
	if !ok {
		return
	}
	tags, err := ParseBackupTags(req.SystemTags)
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	if p.Name == "" {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "name is required"))
		return
	}
	readBPS, err := intParam(p.ReadBPS)
	if err != nil || (p.ReadBPS != "" && readBPS < 1024) {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "networkReadBandwidth must be at least 1024 bytes per second"))
		return
	}
	id, ok := resourceID(p.ResourceUUID)
	if !ok {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "resourceUuid must be 32 lowercase hex digits"))
		return
	}
	ctx := r.Context()
	b, bs, e := a.readyBackup(ctx, r.PathValue("backupUuid"))
	if e != nil {
		a.fail(w, e)
		return
	}
	if _, err := a.DB.GetVolume(ctx, id); err == nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "volume "+id+" exists"))
		return
	}
	a.Jobs.Start(w, r, "CreateDataVolumeFromVolumeBackup", func(ctx context.Context, prog *dataplane.Progress) (any, *ErrorCode) {
		spec, err := refSpec(b.Refs[0], bs)
		if err != nil {
			return nil, apiErr(CodeInternal, "internal error", err.Error())
		}
		repo, m, err := a.openBackup(ctx, b, bs)
		if err != nil {
			return nil, apiErr(CodeOperationFail, "cannot read backup "+b.UUID, err.Error())
		}
		path := filepath.Join(a.Host.StateDir, "volumes", id+".raw")
		fail := func(desc string, err error) (any, *ErrorCode) {
			repo.Close()
			_ = a.Host.CloseVolume(id)
			_ = a.DB.DeleteVolume(context.WithoutCancel(ctx), id)
			os.Remove(path)
			os.Remove(restoreStatePath(a.Host.StateDir, id))
			return nil, apiErr(CodeOperationFail, desc, err.Error())
		}
		if err := os.MkdirAll(filepath.Dir(restoreStatePath(a.Host.StateDir, id)), 0o700); err != nil {
			return fail("cannot create the volume", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fail("cannot create the volume", err)
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			err = f.Truncate(m.Size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fail("cannot create the volume", err)
		}
		typ := b.Type
		if typ == "" {
			typ = "Data"
		}
		rec := &inventory.Volume{UUID: id, Name: p.Name, Path: path, Size: m.Size, Type: typ, State: "Enabled", Status: "Restoring"}
		if err := a.DB.AddVolume(ctx, rec); err != nil {
			return fail("cannot record the volume", err)
		}
		src, _ := json.Marshal(restoreSource{BackupUUID: b.UUID, StorageUUID: bs.UUID, Target: spec, ReadBPS: readBPS, Parallelism: tags.Parallelism})
		v, err := a.Host.OpenVolume(id, path, func(v *dataplane.Volume) error {
			return v.StartRestore(repo, m, restoreStatePath(a.Host.StateDir, id), string(src))
		})
		if err != nil {
			return fail("cannot export the volume", err)
		}
		a.log().Info("volume exported, restoring from backup", "volume", id, "backup", b.UUID, "target", spec.String())
		err = v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: tags.Parallelism, Progress: prog, BytesPerSec: readBPS})
		if err != nil {
			// The daemon is stopping: the state file lets the next start
			// resume; the repository stays open until the volume closes.
			return nil, apiErr(CodeOperationFail, "restore of volume "+id+" interrupted; it resumes when the daemon starts again", err.Error())
		}
		repo.Close()
		if err := a.DB.SetVolumeStatus(ctx, id, "Ready"); err != nil {
			return nil, apiErr(CodeInternal, "internal error", err.Error())
		}
		rec, err = a.DB.GetVolume(ctx, id)
		if err != nil {
			return nil, apiErr(CodeInternal, "internal error", err.Error())
		}
		return map[string]any{"inventory": toVolumeInventory(rec)}, nil
	})
}

// resumeRestores continues the live restores a stop interrupted: each
// volume with a state file is opened from its backup's repository and
// exported, and its copy goes on in the background.
func (a *API) resumeRestores(ctx context.Context, vols []*inventory.Volume) map[string]bool {
	resumed := map[string]bool{}
	for _, rec := range vols {
		statePath := restoreStatePath(a.Host.StateDir, rec.UUID)
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
				repo, err := a.openTarget(ctx, src.Target, a.TargetEnv, 0, 0)
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
						_ = a.DB.SetVolumeStatus(context.WithoutCancel(ctx), rec.UUID, "Ready")
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
