package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
)

// recoverTimeout bounds how long a start waits for one target while it
// settles the backups the previous run left unfinished.
const recoverTimeout = 30 * time.Second

// leftBackup is one backup a previous run left Creating, and what its
// target says of it.
type leftBackup struct {
	rec  *inventory.VolumeBackup
	spec target.Spec
	repo *chunkstore.Repository
	m    *chunkstore.Manifest // nil: no complete manifest
	err  error                // why there is none
}

// RecoverBackups settles the backups a previous run left Creating, before
// that run's jobs are recorded failed. A backup is recorded Ready only
// after its manifest is durable, so a daemon stopped in between left one
// that is complete: it becomes Ready and its job succeeds. One without a
// manifest never finished: its record goes (its chunks are collected
// later). The backups of one job settle together, so a VM backup is whole
// or gone. It returns how many backups became Ready and how many went.
func (a *API) RecoverBackups(ctx context.Context) (ready, dropped int, err error) {
	left, err := a.DB.CreatingBackups(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("backups left unfinished: %w", err)
	}
	var order []string
	byJob := map[string][]*inventory.VolumeBackup{}
	for _, b := range left {
		key := b.JobUUID
		if key == "" {
			key = "backup " + b.UUID
		}
		if byJob[key] == nil {
			order = append(order, key)
		}
		byJob[key] = append(byJob[key], b)
	}
	repos := map[string]*chunkstore.Repository{}
	failed := map[string]error{} // targets that could not be opened
	defer func() {
		for _, r := range repos {
			r.Close()
		}
	}()
	for _, key := range order {
		members := make([]*leftBackup, len(byJob[key]))
		whole := true
		for i, b := range byJob[key] {
			members[i] = a.findManifest(ctx, b, repos, failed)
			whole = whole && members[i].m != nil
		}
		if whole {
			if err := a.finishLeft(ctx, members); err != nil {
				return ready, dropped, err
			}
			ready += len(members)
			continue
		}
		if err := a.dropLeft(ctx, members); err != nil {
			return ready, dropped, err
		}
		dropped += len(members)
	}
	return ready, dropped, nil
}

// findManifest opens b's target (once per target) and loads its manifest.
func (a *API) findManifest(ctx context.Context, b *inventory.VolumeBackup, repos map[string]*chunkstore.Repository, failed map[string]error) *leftBackup {
	lb := &leftBackup{rec: b}
	if len(b.Refs) == 0 {
		lb.err = errors.New("no storage reference")
		return lb
	}
	bs, err := a.DB.GetBackupStorage(ctx, b.Refs[0].BackupStorageUUID)
	if err != nil {
		lb.err = fmt.Errorf("backup storage %s: %w", b.Refs[0].BackupStorageUUID, err)
		return lb
	}
	if lb.spec, lb.err = refSpec(b.Refs[0], bs); lb.err != nil {
		return lb
	}
	key := lb.spec.String()
	if lb.err = failed[key]; lb.err != nil {
		return lb
	}
	if lb.repo = repos[key]; lb.repo == nil {
		octx, cancel := context.WithTimeout(ctx, recoverTimeout)
		lb.repo, lb.err = a.openRepo(octx, lb.spec, a.TargetEnv, target.RepoOptions{})
		cancel()
		if lb.err != nil {
			failed[key] = lb.err
			return lb
		}
		repos[key] = lb.repo
	}
	lctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	defer cancel()
	m, err := lb.repo.LoadManifest(lctx, b.UUID)
	switch {
	case err != nil:
		lb.err = err
	case m.VolumeID != b.VolumeUUID || m.Size != b.Size:
		lb.err = fmt.Errorf("the manifest under its id is of volume %s (%d bytes), not of volume %s (%d bytes)", m.VolumeID, m.Size, b.VolumeUUID, b.Size)
	default:
		lb.m = m
	}
	return lb
}

// finishLeft records complete backups Ready and finishes their job with
// the answer it would have given.
func (a *API) finishLeft(ctx context.Context, members []*leftBackup) error {
	invs := make([]backupInventory, 0, len(members))
	for _, lb := range members {
		bs, _ := a.DB.GetBackupStorage(ctx, lb.rec.Refs[0].BackupStorageUUID)
		md, _ := json.Marshal(metadataOf(lb.m, lb.m.Finished.Sub(lb.m.Started).Seconds(), nil, targetOf(lb.spec, bs), ""))
		if err := a.DB.FinishVolumeBackup(ctx, lb.rec.UUID, inventory.StatusReady, lb.m.Size, string(md)); err != nil {
			return fmt.Errorf("backup %s: %w", lb.rec.UUID, err)
		}
		a.removeMarker(ctx, lb)
		got, err := a.DB.GetVolumeBackup(ctx, lb.rec.UUID)
		if err != nil {
			return fmt.Errorf("backup %s: %w", lb.rec.UUID, err)
		}
		invs = append(invs, toBackupInventory(got))
		a.log().Info("a backup finished before the last stop is recorded Ready", "backup", lb.rec.UUID, "volume", lb.rec.VolumeUUID, "target", lb.spec.String())
	}
	job := members[0].rec.JobUUID
	if job == "" {
		return nil
	}
	var result any = map[string]any{"inventory": invs[0]}
	if members[0].rec.GroupUUID != "" {
		result = map[string]any{"inventories": invs}
	}
	body, _ := json.Marshal(result)
	if err := a.DB.FinishJob(ctx, job, body, nil); err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return fmt.Errorf("job %s: %w", job, err)
	}
	return nil
}

// dropLeft removes the records of a job's backups when one of them did
// not finish, and the manifests of those that did: a VM backup missing a
// member is no backup of the VM.
func (a *API) dropLeft(ctx context.Context, members []*leftBackup) error {
	why := ""
	// Only when every unfinished member is known to have no manifest:
	// one whose target did not answer may have finished, and a sync
	// imports the whole VM backup once its target is back.
	missing := true
	for _, lb := range members {
		if lb.m == nil {
			if why == "" {
				why = fmt.Sprintf("backup %s: %v", lb.rec.UUID, lb.err)
			}
			missing = missing && errors.Is(lb.err, chunkstore.ErrNotFound)
		}
	}
	for _, lb := range members {
		if lb.m != nil && missing {
			dctx, cancel := context.WithTimeout(ctx, recoverTimeout)
			err := lb.repo.DeleteManifest(dctx, lb.rec.UUID)
			cancel()
			if err != nil {
				a.log().Warn("cannot remove the manifest of an unfinished VM backup's member", "backup", lb.rec.UUID, "target", lb.spec.String(), "err", err)
			}
		}
		if err := a.DB.DeleteVolumeBackup(ctx, lb.rec.UUID); err != nil && !errors.Is(err, inventory.ErrNotFound) {
			return fmt.Errorf("backup %s: %w", lb.rec.UUID, err)
		}
		a.removeMarker(ctx, lb)
		a.log().Warn("a backup left unfinished by the last stop is dropped from the inventory", "backup", lb.rec.UUID,
			"volume", lb.rec.VolumeUUID, "target", lb.spec.String(), "reason", why)
	}
	return nil
}

// removeMarker removes the marker a killed backup left, so collections
// need not wait for it to go stale.
func (a *API) removeMarker(ctx context.Context, lb *leftBackup) {
	if lb.repo == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	defer cancel()
	if err := lb.repo.RemoveBackupMarker(rctx, lb.rec.UUID); err != nil && !errors.Is(err, chunkstore.ErrNotFound) {
		a.log().Warn("cannot remove an unfinished backup's marker", "backup", lb.rec.UUID, "target", lb.spec.String(), "err", err)
	}
}
