package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// syncVolumeBackups is ZStack's SyncVolumeBackup (PUT
// /volume-backups/imageStore/{storageUuid}/actions with
// {"syncVolumeBackup":{}}): it reads the manifests of the storage's
// repository (or of the fsInfo target its systemTags name), records every
// backup the inventory does not know, and drops the records of copies the
// target no longer holds; the result counts both, as ZStack's
// {"result":{"newBackupCount","deletedBackupCount"}}. This is how a repository
// written by another daemon, on another host or an earlier install, is
// taken over: the repository describes itself.
func (a *API) syncVolumeBackups(ctx context.Context, c *apiCall) (JobFunc, error) {
	bs, err := a.storage(ctx, c.Path("storageUuid"))
	if err != nil {
		return nil, err
	}
	tags, err := ParseBackupTags(c.SystemTags())
	if err != nil {
		return nil, errTag(err)
	}
	spec, env, err := a.backupTarget(bs, tags)
	if err != nil {
		return nil, errTag(err)
	}
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		repo, err := a.openRepo(ctx, spec, env, target.RepoOptions{})
		if err != nil {
			return nil, errFailed("no repository at "+spec.String(), err)
		}
		defer repo.Close()
		ids, added, copies, bad, err := a.importBackups(ctx, bs, spec, repo, prog)
		if err != nil {
			return nil, err
		}
		tgt := refTarget(spec, bs)
		// Copies the inventory records on this target whose manifest the
		// target no longer has are gone: their records go (a backup
		// still being made has no manifest yet, and stays).
		inRepo := make(map[string]bool, len(ids))
		for _, bid := range ids {
			inRepo[bid] = true
		}
		recorded, err := a.DB.BackupsOnTarget(ctx, bs.UUID, tgt)
		if err != nil {
			return nil, err
		}
		deleted := 0
		for _, bid := range recorded {
			if inRepo[bid] {
				continue
			}
			if b, err := a.DB.GetVolumeBackup(ctx, bid); err != nil || b.Status != inventory.StatusReady {
				continue
			}
			if _, err := a.DB.DeleteVolumeBackupRefs(ctx, bid, []string{bs.UUID}); err != nil {
				return nil, err
			}
			deleted++
			a.log().Info("sync: a recorded backup is no longer in its target; its record goes", "backup", bid, "target", spec.String())
		}
		return map[string]any{
			"result":       map[string]int{"newBackupCount": len(added), "deletedBackupCount": deleted, "newCopyCount": copies},
			"inventories":  added,
			"badManifests": bad,
		}, nil
	}, nil
}

// hasCopyOn says whether a backup has a recorded copy on a storage.
func hasCopyOn(b *inventory.VolumeBackup, storageUUID string) bool {
	for _, r := range b.Refs {
		if r.BackupStorageUUID == storageUUID {
			return true
		}
	}
	return false
}

// importBackups records every backup in repo (the storage bs's target
// spec) the inventory does not know, and each known backup's copy there
// the inventory lacks. An unreadable manifest is named in bad and the
// others still import. It returns the backup ids the repository lists.
func (a *API) importBackups(ctx context.Context, bs *inventory.BackupStorage, spec target.Spec, repo *chunkstore.Repository, prog *dataplane.Progress) (ids []string, added []any, copies int, bad []chunkstore.BadManifest, err error) {
	listing, err := repo.ListManifests(ctx)
	if err != nil {
		return nil, nil, 0, nil, errFailed("cannot list the backups of "+spec.String(), err)
	}
	ids = listing.IDs
	prog.SetTotal(int64(len(ids)))
	tgt := refTarget(spec, bs)
	added = []any{}
	bad = []chunkstore.BadManifest{}
	// summary reads what an unknown backup's record needs: its manifest,
	// or, once many are unknown (a fresh daemon taking over a repository),
	// the backup index, which answers for thousands in a few requests.
	var summaries map[string]*chunkstore.Manifest
	var badSummaries map[string]string
	unknown := 0
	summary := func(bid string) (*chunkstore.Manifest, error) {
		if unknown++; unknown <= chunkstore.IndexAfter {
			return repo.LoadManifest(ctx, bid)
		}
		if summaries == nil {
			ms, bad, _, err := repo.SummariesOf(ctx, listing, true)
			if err != nil {
				return nil, err
			}
			summaries = make(map[string]*chunkstore.Manifest, len(ms))
			for _, m := range ms {
				summaries[m.ID] = m
			}
			badSummaries = map[string]string{}
			for _, b := range bad {
				badSummaries[b.ID] = b.Error
			}
		}
		if m, ok := summaries[bid]; ok {
			return m, nil
		}
		if e, ok := badSummaries[bid]; ok {
			return nil, fmt.Errorf("%s: %w", e, chunkstore.ErrBadManifest)
		}
		return nil, fmt.Errorf("backup %s: %w", bid, chunkstore.ErrNotFound)
	}
	for _, bid := range ids {
		prog.Add(1)
		if known, err := a.DB.GetVolumeBackup(ctx, bid); err == nil {
			// Known: this target holds one more copy of it, if the
			// inventory did not know that copy.
			if !hasCopyOn(known, bs.UUID) {
				if err := a.DB.AddVolumeBackupRef(ctx, inventory.BackupStorageRef{VolumeBackupUUID: bid, BackupStorageUUID: bs.UUID,
					InstallPath: installPath(spec, bid), Status: inventory.StatusReady, Target: tgt}); err != nil {
					return nil, nil, 0, nil, err
				}
				copies++
			}
			continue
		} else if !isNotFound(err) {
			return nil, nil, 0, nil, err
		}
		m, err := summary(bid)
		if errors.Is(err, chunkstore.ErrNotFound) {
			continue // deleted since the listing
		}
		if errors.Is(err, chunkstore.ErrBadManifest) {
			// Named in the answer; the good ones are still imported.
			a.log().Warn("sync: a manifest cannot be read; its backup is not imported", "backup", bid, "target", spec.String(), "err", err)
			bad = append(bad, chunkstore.BadManifest{ID: bid, Error: err.Error()})
			continue
		}
		if err != nil {
			return nil, nil, 0, nil, errFailed("cannot read backup "+bid+" in "+spec.String(), err)
		}
		md, _ := json.Marshal(metadataOf(m, float64(m.Stats.DurationNanos)/1e9, nil, targetOf(spec, bs), ""))
		typ := inventory.VolumeType(m.Meta["volumeType"])
		if typ == "" {
			typ = inventory.VolumeData
		}
		name := m.Meta["name"]
		if name == "" {
			name = "imported-" + bid[:8]
		}
		rec := &inventory.VolumeBackup{UUID: bid, VolumeUUID: m.VolumeID, Name: name, Description: m.Meta["description"],
			GroupUUID: m.Meta["groupUuid"], VMInstanceUUID: m.Meta["vmInstanceUuid"],
			Type: typ, State: inventory.StateEnabled, Status: inventory.StatusReady, Size: m.Size, Mode: string(m.Mode), Metadata: string(md), Created: m.Finished}
		ref := inventory.BackupStorageRef{BackupStorageUUID: bs.UUID, InstallPath: installPath(spec, bid), Status: inventory.StatusReady, Target: tgt}
		if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
			return nil, nil, 0, nil, errFailed("cannot record backup "+bid, err)
		}
		got, err := a.DB.GetVolumeBackup(ctx, bid)
		if err != nil {
			return nil, nil, 0, nil, fmt.Errorf("cannot read back backup %s: %w", bid, err)
		}
		added = append(added, toBackupInventory(got))
	}
	return ids, added, copies, bad, nil
}
