package control

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// verification is what verifying one backup found, kept in its metadata
// under "verification".
type verification struct {
	Checked   string   `json:"checked"` // RFC 3339, UTC
	Copies    int      `json:"copies"`  // storage copies read
	Chunks    int      `json:"chunks"`
	Bytes     int64    `json:"bytes"`
	BadChunks []string `json:"badChunks,omitempty"` // still bad in some copy
	Repaired  []string `json:"repaired,omitempty"`  // rewritten from the live volume
	Errors    []string `json:"errors,omitempty"`    // copies that could not be read
}

// verifyVolumeBackup is PUT /volume-backups/{uuid}/actions with
// {"verifyVolumeBackup":{}}: every copy of the backup is re-read now and
// checked against its keys; the answer is the backup's inventory (Ready,
// or Corrupt naming the bad chunks) and what was found.
func (a *API) verifyVolumeBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	b, err := a.backup(ctx, c.Path("uuid"))
	if err != nil {
		return nil, err
	}
	if b.Status != inventory.StatusReady && b.Status != inventory.StatusCorrupt {
		return nil, errRefused("backup not ready", "volume backup %s is %s", b.UUID, b.Status)
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		v, err := a.verifyBackup(ctx, b, prog)
		if err != nil {
			return nil, errFailed("verification of volume backup "+b.UUID+" failed", err)
		}
		got, err := a.DB.GetVolumeBackup(ctx, b.UUID)
		if err != nil {
			return nil, err
		}
		return map[string]any{"inventory": toBackupInventory(got), "verification": v}, nil
	}, nil
}

// verifyBackup re-reads every chunk of every copy of b. A bad or missing
// chunk whose content the live volume still holds at its place (the same
// key) is rewritten from it; what stays bad marks the backup Corrupt,
// named in its metadata; a backup found whole is Ready again. A copy that
// cannot be read at all is an error, and changes nothing.
func (a *API) verifyBackup(ctx context.Context, b *inventory.VolumeBackup, prog *dataplane.Progress) (*verification, error) {
	v := &verification{Checked: time.Now().UTC().Format(time.RFC3339)}
	bad := map[string]bool{}
	for _, ref := range b.Refs {
		bs, err := a.DB.GetBackupStorage(ctx, ref.BackupStorageUUID)
		if err != nil {
			continue // the storage is gone; so is this copy's record soon
		}
		spec, err := refSpec(ref, bs)
		if err != nil {
			return nil, err
		}
		repo, err := a.openRepo(ctx, spec, a.TargetEnv, target.RepoOptions{})
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", spec.String(), err)
		}
		err = a.verifyCopy(ctx, b, repo, v, bad, prog)
		repo.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", spec.String(), err)
		}
		v.Copies++
	}
	for k := range bad {
		v.BadChunks = append(v.BadChunks, k)
	}
	status := inventory.StatusReady
	if len(v.BadChunks) > 0 {
		status = inventory.StatusCorrupt
		a.log().Error("a backup failed verification", "backup", b.UUID, "volume", b.VolumeUUID, "badChunks", v.BadChunks)
	}
	md := map[string]any{}
	_ = json.Unmarshal([]byte(b.Metadata), &md)
	md["verification"] = v
	mj, _ := json.Marshal(md)
	if err := a.DB.FinishVolumeBackup(ctx, b.UUID, status, b.Size, string(mj)); err != nil {
		return nil, err
	}
	a.Metrics.verifyDone(status == inventory.StatusReady, len(v.Repaired))
	return v, nil
}

// verifyCopy verifies one copy, repairing what the live volume can.
func (a *API) verifyCopy(ctx context.Context, b *inventory.VolumeBackup, repo *chunkstore.Repository, v *verification, bad map[string]bool, prog *dataplane.Progress) error {
	opts := chunkstore.VerifyOptions{}
	if prog != nil {
		opts.OnTotal, opts.OnProgress = prog.SetTotal, prog.Add
	}
	rep, err := repo.Verify(ctx, []string{b.UUID}, opts)
	if err != nil {
		return err
	}
	if len(rep.BadManifests) > 0 {
		v.Errors = append(v.Errors, rep.BadManifests[0].Error)
		bad["manifest"] = true
		return nil
	}
	if len(rep.Bad) > 0 {
		if n := a.repairFromVolume(ctx, b, repo, rep.Bad, v); n > 0 {
			if rep, err = repo.Verify(ctx, []string{b.UUID}, chunkstore.VerifyOptions{}); err != nil {
				return err
			}
		}
	}
	v.Chunks += rep.Chunks
	v.Bytes += rep.Bytes
	for _, c := range rep.Bad {
		bad[c.Key.String()] = true
	}
	return nil
}

// repairFromVolume rewrites bad chunks from the live volume where it
// still holds their content at a place the manifest names them.
func (a *API) repairFromVolume(ctx context.Context, b *inventory.VolumeBackup, repo *chunkstore.Repository, badChunks []chunkstore.BadChunk, v *verification) int {
	vol := a.Host.Volume(b.VolumeUUID)
	if vol == nil {
		return 0
	}
	m, err := repo.LoadManifest(ctx, b.UUID)
	if err != nil {
		return 0
	}
	want := map[chunkstore.Key]bool{}
	for _, c := range badChunks {
		want[c.Key] = true
	}
	n := 0
	buf := make([]byte, repo.ChunkSize())
	for i, k := range m.Chunks {
		if !want[k] {
			continue
		}
		data := buf[:m.ChunkLen(i)]
		if vol.ReadAt(ctx, data, int64(i)*int64(m.ChunkSize)) != nil || repo.Key(data) != k {
			continue // the volume changed there since; another place may do
		}
		if err := repo.RepairChunk(ctx, k, data); err != nil {
			a.log().Warn("cannot repair a chunk", "backup", b.UUID, "chunk", k.String(), "err", err)
			continue
		}
		delete(want, k)
		v.Repaired = append(v.Repaired, k.String())
		a.log().Info("chunk repaired from the live volume", "backup", b.UUID, "chunk", k.String(), "volume", b.VolumeUUID)
		n++
	}
	return n
}

// verifyEvery re-verifies every Ready or Corrupt backup each interval.
func (a *API) verifyEvery(ctx context.Context, interval time.Duration) {
	every(ctx, interval, func() {
		backups, err := a.DB.BackupsWithStatus(ctx, inventory.StatusReady, inventory.StatusCorrupt)
		if err != nil {
			a.log().Error("scheduled verification: cannot list backups", "err", err)
			return
		}
		corrupt := 0
		for _, b := range backups {
			v, err := a.verifyBackup(ctx, b, nil)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				a.log().Error("scheduled verification of a backup failed", "backup", b.UUID, "err", err)
			case len(v.BadChunks) > 0:
				corrupt++
			}
		}
		a.log().Info("scheduled verification", "backups", len(backups), "corrupt", corrupt)
	})
}

// untrusted says whether a backup failed verification (it must not be a
// parent).
func (a *API) untrusted(ctx context.Context) func(id string) bool {
	return func(id string) bool {
		b, err := a.DB.GetVolumeBackup(ctx, id)
		return err == nil && b.Status == inventory.StatusCorrupt
	}
}
