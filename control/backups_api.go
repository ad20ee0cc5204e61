package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

type backupRefInventory struct {
	VolumeBackupUUID  string `json:"volumeBackupUuid"`
	BackupStorageUUID string `json:"backupStorageUuid"`
	InstallPath       string `json:"installPath"`
	Status            string `json:"status"`
	CreateDate        string `json:"createDate"`
	LastOpDate        string `json:"lastOpDate"`
}

type backupInventory struct {
	UUID              string               `json:"uuid"`
	VolumeUUID        string               `json:"volumeUuid"`
	Name              string               `json:"name"`
	Description       string               `json:"description,omitempty"`
	Type              string               `json:"type"`
	State             string               `json:"state"`
	Status            string               `json:"status"`
	Size              int64                `json:"size"`
	Metadata          string               `json:"metadata,omitempty"`
	Mode              string               `json:"mode"`
	CreateDate        string               `json:"createDate"`
	LastOpDate        string               `json:"lastOpDate"`
	BackupStorageRefs []backupRefInventory `json:"backupStorageRefs"`
}

func toBackupInventory(b *inventory.VolumeBackup) backupInventory {
	inv := backupInventory{UUID: b.UUID, VolumeUUID: b.VolumeUUID, Name: b.Name, Description: b.Description,
		Type: string(b.Type), State: string(b.State), Status: string(b.Status), Size: b.Size, Metadata: b.Metadata, Mode: b.Mode,
		CreateDate: gson(b.Created), LastOpDate: gson(b.LastOp), BackupStorageRefs: []backupRefInventory{}}
	for _, r := range b.Refs {
		inv.BackupStorageRefs = append(inv.BackupStorageRefs, backupRefInventory{VolumeBackupUUID: r.VolumeBackupUUID,
			BackupStorageUUID: r.BackupStorageUUID, InstallPath: r.InstallPath, Status: string(r.Status),
			CreateDate: gson(r.Created), LastOpDate: gson(r.LastOp)})
	}
	return inv
}

// backupMetadata is the inventory's metadata string.
type backupMetadata struct {
	Mode         string  `json:"mode"`
	Parent       string  `json:"parent,omitempty"`
	BytesRead    int64   `json:"bytesRead"`
	BytesStored  int64   `json:"bytesStored"`
	ChunksTotal  int     `json:"chunksTotal"`
	ChunksRead   int     `json:"chunksRead"`
	ChunksNew    int     `json:"chunksNew"`
	ChunksZero   int     `json:"chunksZero"`
	ChunksReused int     `json:"chunksReused"`
	Seconds      float64 `json:"durationSeconds"`
	FullReason   string  `json:"fullReason,omitempty"`
	Parallelism  int     `json:"parallelismDegree,omitempty"`
	// Bandwidth holds the limits the request set, in bytes per second.
	Bandwidth map[string]int64 `json:"bandwidth,omitempty"`
	// Target is where an fsInfo tag sent the backup (URL form).
	Target string `json:"target,omitempty"`
	// SourceAddress is the backup network address connections left from.
	SourceAddress string `json:"sourceAddress,omitempty"`
}

// metadataOf is the inventory's metadata of a backup's manifest.
func metadataOf(m *chunkstore.Manifest, seconds float64, bw map[string]int64, target, source string) backupMetadata {
	p, _ := strconv.Atoi(m.Meta["parallelismDegree"])
	return backupMetadata{Mode: string(m.Mode), Parent: m.Parent, BytesRead: m.Stats.BytesRead,
		BytesStored: m.Stats.BytesStored, ChunksTotal: m.Stats.ChunksTotal, ChunksRead: m.Stats.ChunksRead,
		ChunksNew: m.Stats.ChunksNew, ChunksZero: m.Stats.ChunksZero, ChunksReused: m.Stats.ChunksReused,
		Seconds: seconds, FullReason: m.Meta["fullReason"], Parallelism: p,
		Bandwidth: nonZero(bw), Target: target, SourceAddress: source}
}

func targetOf(spec target.Spec, bs *inventory.BackupStorage) string {
	if spec == storageSpec(bs) {
		return ""
	}
	return spec.String()
}

func addrString(env target.Env) string {
	if env.LocalAddr.IsValid() {
		return env.LocalAddr.String()
	}
	return ""
}

// backupParams are CreateVolumeBackup's parameters.
type backupParams struct {
	BackupStorageUUID     string      `json:"backupStorageUuid"`
	Name                  string      `json:"name"`
	Description           string      `json:"description"`
	ResourceUUID          string      `json:"resourceUuid"`
	Mode                  string      `json:"mode"`
	VolumeReadBandwidth   json.Number `json:"volumeReadBandwidth"`
	VolumeWriteBandwidth  json.Number `json:"volumeWriteBandwidth"`
	NetworkReadBandwidth  json.Number `json:"networkReadBandwidth"`
	NetworkWriteBandwidth json.Number `json:"networkWriteBandwidth"`
}

// bandwidths checks and returns the bandwidth limits, in bytes per second.
func (p *backupParams) bandwidths() (map[string]int64, error) {
	bw := map[string]int64{}
	for name, n := range map[string]json.Number{"volumeReadBandwidth": p.VolumeReadBandwidth, "volumeWriteBandwidth": p.VolumeWriteBandwidth,
		"networkReadBandwidth": p.NetworkReadBandwidth, "networkWriteBandwidth": p.NetworkWriteBandwidth} {
		v, err := bandwidthParam(name, n)
		if err != nil {
			return nil, err
		}
		bw[name] = v
	}
	return bw, nil
}

// bandwidthParam reads a bandwidth in bytes per second: 0 or absent is no
// limit (the official Go SDK sends 0 for every limit not set), else at
// least 1024.
func bandwidthParam(name string, n json.Number) (int64, error) {
	v, err := intParam(n)
	if err != nil || v < 0 || (v > 0 && v < 1024) {
		return 0, errInvalid("%s must be 0 (no limit) or at least 1024 bytes per second", name)
	}
	return v, nil
}

// createVolumeBackup is CreateVolumeBackup (POST
// /volumes/{volumeUuid}/volume-backups).
func (a *API) createVolumeBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p backupParams
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	volID := c.Path("volumeUuid")
	vrec, err := a.volume(ctx, volID)
	if err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, errInvalid("name is required")
	}
	mode, err := chunkstore.ParseMode(p.Mode)
	if err != nil {
		return nil, errInvalid("%v", err)
	}
	bw, err := p.bandwidths()
	if err != nil {
		return nil, err
	}
	bs, err := a.storage(ctx, p.BackupStorageUUID)
	if err != nil {
		return nil, err
	}
	// The storage's tags are defaults; the backup's own win.
	var storageTags []string
	_ = json.Unmarshal([]byte(bs.SystemTags), &storageTags)
	tags, err := ParseBackupTags(mergeTags(storageTags, c.SystemTags()))
	if err != nil {
		return nil, errTag(err)
	}
	spec, env, err := a.backupTarget(bs, tags)
	if err != nil {
		return nil, errTag(err)
	}
	id, err := resourceID(p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	vol := a.Host.Volume(volID)
	if vol == nil {
		return nil, errRefused("volume not served", "volume %s is recorded but not open on this host", volID)
	}
	userTags, _ := json.Marshal(c.UserTags())
	rec := &inventory.VolumeBackup{UUID: id, VolumeUUID: volID, Name: p.Name, Description: p.Description,
		Type: vrec.Type, State: inventory.StateEnabled, Status: inventory.StatusCreating, Size: vrec.Size, Mode: string(mode), UserTags: string(userTags)}
	ref := inventory.BackupStorageRef{BackupStorageUUID: bs.UUID, InstallPath: installPath(spec, id), Status: inventory.StatusCreating}
	if spec != storageSpec(bs) {
		tj, _ := json.Marshal(spec)
		ref.Target = string(tj)
	}
	if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
		return nil, errInvalid("cannot record the backup: %v", err)
	}
	// The job could not be recorded: neither may the backup be.
	c.undo = func() { _ = a.DB.DeleteVolumeBackup(context.WithoutCancel(ctx), id) }
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		fail := func(desc string, err error) (any, error) {
			a.Metrics.backupFailed()
			// No inventory is left in Creating: the record goes.
			dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = a.DB.DeleteVolumeBackup(dctx, id)
			e := errFailed(desc, err)
			e.Cause = &ErrorCode{Code: CodeInternal, Description: "cause", Details: err.Error()}
			return nil, e
		}
		// The target's bandwidth limits wrap the store; the volume's read
		// limit is the backup's own. volumeWriteBandwidth limits writes to
		// the volume, which a backup does not make.
		repo, err := a.openRepo(ctx, spec, env, target.RepoOptions{Create: createFor(spec),
			WriteBytesPerSec: bw["networkWriteBandwidth"], ReadBytesPerSec: bw["networkReadBandwidth"]})
		if err != nil {
			return fail("cannot open the backup target "+spec.String(), err)
		}
		defer repo.Close()
		start := time.Now()
		m, err := liveBackup(ctx, a.log(), vol, repo, spec, dataplane.LiveBackupOptions{
			ReadBytesPerSec: bw["volumeReadBandwidth"],
			Chain:           chainOf(bs, spec), Mode: mode, ID: id, Parallelism: tags.Parallelism, Progress: prog,
			Meta: map[string]string{"name": p.Name, "description": p.Description, "backupStorageUuid": bs.UUID, "volumeType": string(vrec.Type),
				"parallelismDegree": strconv.Itoa(tags.Parallelism)},
		})
		if err != nil {
			return fail("volume backup to "+spec.String()+" failed", err)
		}
		md, _ := json.Marshal(metadataOf(m, time.Since(start).Seconds(), bw, targetOf(spec, bs), addrString(env)))
		if err := a.DB.FinishVolumeBackup(ctx, id, inventory.StatusReady, m.Size, string(md)); err != nil {
			return fail("cannot record the backup", err)
		}
		a.Metrics.backupDone(string(m.Mode), m.Stats.BytesRead, m.Stats.BytesStored, time.Since(start).Seconds())
		got, err := a.DB.GetVolumeBackup(ctx, id)
		if err != nil {
			return fail("cannot read the backup back", err)
		}
		return map[string]any{"inventory": toBackupInventory(got)}, nil
	}, nil
}

// createFor is how a backup opens its target: a storage's own repository
// exists since the storage was added; an fsInfo target's is created on
// first use.
func createFor(spec target.Spec) target.Create {
	if spec.Kind == target.Local {
		return target.OpenExisting
	}
	return target.CreateIfMissing
}

// mergeTags puts the request's tags after the storage's, dropping a
// storage tag whose kind the request sets itself.
func mergeTags(defaults, own []string) []string {
	kind := func(t string) string {
		for _, p := range []string{fsInfoPrefix, parallelismPrefix, cidrPrefix} {
			if len(t) >= len(p) && t[:len(p)] == p {
				return p
			}
		}
		return t
	}
	set := map[string]bool{}
	for _, t := range own {
		set[kind(t)] = true
	}
	var out []string
	for _, t := range defaults {
		if !set[kind(t)] {
			out = append(out, t)
		}
	}
	return append(out, own...)
}

// queryVolumeBackups is QueryVolumeBackup (GET /volume-backups[/{uuid}]).
func (a *API) queryVolumeBackups(ctx context.Context, c *apiCall) (any, error) {
	return a.query(ctx, c, inventory.VolumeBackups, func(ctx context.Context, ids []string) ([]any, error) {
		got, err := a.DB.GetVolumeBackups(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make([]any, 0, len(got))
		for _, b := range got {
			out = append(out, toBackupInventory(b))
		}
		return out, nil
	})
}

// backup loads a backup record: SYS.1003 if there is none.
func (a *API) backup(ctx context.Context, id string) (*inventory.VolumeBackup, error) {
	b, err := a.DB.GetVolumeBackup(ctx, id)
	return b, notFoundOr(err, "no volume backup %s", id)
}

// deleteVolumeBackup is DeleteVolumeBackup (DELETE /volume-backups/{uuid},
// with ZStack's query parameters backupStorageUuids, to delete only the
// copies on those storages, and deleteMode): each copy's manifest goes,
// its chunks stay until a garbage collection finds nothing using them; the
// record goes with its last copy. In Permissive mode (the default) a copy
// whose target cannot be reached fails the call and stays recorded; in
// Enforcing mode it is dropped from the inventory all the same (its
// manifest stays in the target, and a SyncVolumeBackup would find it
// again).
func (a *API) deleteVolumeBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	id := c.Path("uuid")
	b, err := a.backup(ctx, id)
	if err != nil {
		return nil, err
	}
	q, err := queryValues(c.r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	enforcing := false
	switch mode := firstValue(q, "deleteMode"); mode {
	case "", "Permissive":
	case "Enforcing":
		enforcing = true
	default:
		return nil, errInvalid("deleteMode %q: want Permissive or Enforcing", mode)
	}
	var only []string
	for _, v := range q["backupStorageUuids"] {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				only = append(only, s)
			}
		}
	}
	refs := b.Refs
	if len(only) > 0 {
		refs = nil
		for _, s := range only {
			found := false
			for _, r := range b.Refs {
				if r.BackupStorageUUID == s {
					refs, found = append(refs, r), true
				}
			}
			if !found {
				return nil, errNotFound("volume backup %s has no copy on backup storage %s", id, s)
			}
		}
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		var gone []string
		for _, ref := range refs {
			if err := a.deleteCopy(ctx, ref); err != nil {
				if !enforcing {
					if len(gone) > 0 {
						_, _ = a.DB.DeleteVolumeBackupRefs(ctx, id, gone)
					}
					return nil, errFailed("cannot delete the copy of backup "+id+" on backup storage "+ref.BackupStorageUUID, err)
				}
				a.log().Warn("deleting a backup copy whose target cannot be reached (Enforcing): its manifest stays there",
					"backup", id, "storage", ref.BackupStorageUUID, "err", err)
			}
			gone = append(gone, ref.BackupStorageUUID)
		}
		remaining, err := a.DB.DeleteVolumeBackupRefs(ctx, id, gone)
		if err != nil {
			return nil, errFailed("cannot delete the backup record", err)
		}
		if remaining == 0 && a.exports != nil {
			a.exports.drop(id)
		}
		return map[string]any{}, nil
	}, nil
}

// deleteCopy removes a backup's manifest from the target of one of its
// copies; a storage already gone has nothing to remove.
func (a *API) deleteCopy(ctx context.Context, ref inventory.BackupStorageRef) error {
	bs, err := a.DB.GetBackupStorage(ctx, ref.BackupStorageUUID)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	spec, err := refSpec(ref, bs)
	if err != nil {
		return err
	}
	repo, err := a.openRepo(ctx, spec, a.TargetEnv, target.RepoOptions{Create: createFor(spec)})
	if err != nil {
		return fmt.Errorf("open %s: %w", spec.String(), err)
	}
	defer repo.Close()
	if err := repo.DeleteManifest(ctx, ref.VolumeBackupUUID); err != nil && !errors.Is(err, chunkstore.ErrNotFound) {
		return err
	}
	return nil
}

func nonZero(m map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		if v > 0 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
