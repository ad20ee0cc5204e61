package control

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
)

// storageSpec is the target of a backup storage itself: its url.
func storageSpec(bs *inventory.BackupStorage) target.Spec {
	return target.Spec{Kind: target.Local, URL: bs.URL, Key: storageKey(bs)}
}

// storageKey is the key name of a storage's encryptionKey tag, if any.
func storageKey(bs *inventory.BackupStorage) string {
	var tags []string
	_ = json.Unmarshal([]byte(bs.SystemTags), &tags)
	for _, t := range tags {
		if name, ok := strings.CutPrefix(t, keyPrefix); ok {
			return name
		}
	}
	return ""
}

// backupTarget resolves where a backup goes: the fsInfo tag's target, or
// the storage's own url; and the source address the backup network asks
// for. Errors are the caller's SYS.1007.
func (a *API) backupTarget(bs *inventory.BackupStorage, tags BackupTags) (target.Spec, target.Env, error) {
	spec := storageSpec(bs)
	if tags.FSInfo != nil {
		var err error
		if spec, err = target.FromFSInfo(tags.FSInfo.Type, tags.FSInfo.URL, tags.FSInfo.Options); err != nil {
			return spec, target.Env{}, err
		}
		spec.Key = tags.Key
	}
	env := a.TargetEnv
	if tags.NetworkCIDR.IsValid() {
		addr, err := target.SourceAddr(tags.NetworkCIDR)
		if err != nil {
			return spec, env, &TagError{Tag: cidrPrefix + tags.NetworkCIDR.String(), Reason: err.Error()}
		}
		env.LocalAddr = addr
	}
	return spec, env, nil
}

// chainOf names the changed-block map of backups from one volume to one
// target: the storage's uuid for its own url, plus a hash of the target
// for an fsInfo one, so incrementals to two targets never share a map.
func chainOf(bs *inventory.BackupStorage, spec target.Spec) string {
	if spec == storageSpec(bs) {
		return bs.UUID
	}
	return fmt.Sprintf("%s-%08x", bs.UUID, uint32(xxhash.Sum64String(spec.String())))
}

// installPath is where a backup's manifest lives, in the target's URL form.
func installPath(spec target.Spec, id string) string {
	if spec.Kind == target.Local {
		return filepath.Join(spec.URL, "manifests", id)
	}
	u := spec.String()
	base, q, _ := strings.Cut(u, "?")
	if q != "" {
		q = "?" + q
	}
	return strings.TrimSuffix(base, "/") + "/manifests/" + id + q
}

// refTarget is what a backup reference records of its target: "" for the
// storage's own url, else the target's JSON, which refSpec reads back.
func refTarget(spec target.Spec, bs *inventory.BackupStorage) string {
	if spec == storageSpec(bs) {
		return ""
	}
	tj, _ := json.Marshal(spec)
	return string(tj)
}

// refSpec is the target a backup reference points at.
func refSpec(ref inventory.BackupStorageRef, bs *inventory.BackupStorage) (target.Spec, error) {
	if ref.Target == "" {
		return storageSpec(bs), nil
	}
	var s target.Spec
	if err := json.Unmarshal([]byte(ref.Target), &s); err != nil {
		return s, fmt.Errorf("backup %s: recorded target %q: %w", ref.VolumeBackupUUID, ref.Target, err)
	}
	return s, nil
}

// storageTargets lists every target a storage's backups live in: its url
// and each fsInfo target recorded for them.
func storageTargets(ctx context.Context, db *inventory.DB, bs *inventory.BackupStorage) []target.Spec {
	specs := []target.Spec{storageSpec(bs)}
	js, _ := db.StorageTargets(ctx, bs.UUID)
	for _, j := range js {
		var s target.Spec
		if json.Unmarshal([]byte(j), &s) == nil && s.Check() == nil {
			specs = append(specs, s)
		}
	}
	return specs
}

// chainFor names the changed-block map of live backups into repo by the
// same rule as the API's: a backup storage's own repository is its chain
// (chainOf); any other repository's chain is its config id.
func chainFor(ctx context.Context, db *inventory.DB, spec target.Spec, repo *chunkstore.Repository) (string, error) {
	storages, err := db.ListBackupStorages(ctx)
	if err != nil {
		return "", err
	}
	for _, bs := range storages {
		if storageSpec(bs) == spec {
			return chainOf(bs, spec), nil
		}
	}
	return repo.Config().ID, nil
}
