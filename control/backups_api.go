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
	GroupUUID         string               `json:"groupUuid,omitempty"`
	VMInstanceUUID    string               `json:"vmInstanceUuid,omitempty"`
	CreateDate        string               `json:"createDate"`
	LastOpDate        string               `json:"lastOpDate"`
	BackupStorageRefs []backupRefInventory `json:"backupStorageRefs"`
}

func toBackupInventory(b *inventory.VolumeBackup) backupInventory {
	inv := backupInventory{UUID: b.UUID, VolumeUUID: b.VolumeUUID, Name: b.Name, Description: b.Description,
		Type: string(b.Type), State: string(b.State), Status: string(b.Status), Size: b.Size, Metadata: b.Metadata, Mode: b.Mode,
		GroupUUID: b.GroupUUID, VMInstanceUUID: b.VMInstanceUUID,
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
	// Consistency is "application" (the guest's file systems frozen at
	// the instant, through its agent) or "crash"; with a note saying why
	// a freeze was not had. Set for disks read through QEMU.
	Consistency     string `json:"consistency,omitempty"`
	ConsistencyNote string `json:"consistencyNote,omitempty"`
}

// metadataOf is the inventory's metadata of a backup's manifest.
func metadataOf(m *chunkstore.Manifest, seconds float64, bw map[string]int64, target, source string) backupMetadata {
	p, _ := strconv.Atoi(m.Meta["parallelismDegree"])
	return backupMetadata{Mode: string(m.Mode), Parent: m.Parent, BytesRead: m.Stats.BytesRead,
		BytesStored: m.Stats.BytesStored, ChunksTotal: m.Stats.ChunksTotal, ChunksRead: m.Stats.ChunksRead,
		ChunksNew: m.Stats.ChunksNew, ChunksZero: m.Stats.ChunksZero, ChunksReused: m.Stats.ChunksReused,
		Seconds: seconds, FullReason: m.Meta["fullReason"], Parallelism: p,
		Bandwidth: nonZero(bw), Target: target, SourceAddress: source,
		Consistency: m.Meta["consistency"], ConsistencyNote: m.Meta["consistencyNote"]}
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

// backupRequest is a checked CreateVolumeBackup or CreateVmBackup: where
// the backups go and how.
type backupRequest struct {
	p        backupParams
	mode     chunkstore.Mode
	bw       map[string]int64
	bs       *inventory.BackupStorage
	tags     BackupTags
	spec     target.Spec
	env      target.Env
	userTags string
	job      string // the job making the backups
}

// parseBackupRequest checks a backup call's parameters and tags.
func (a *API) parseBackupRequest(ctx context.Context, c *apiCall) (*backupRequest, error) {
	var req backupRequest
	if err := c.Params(&req.p); err != nil {
		return nil, err
	}
	if req.p.Name == "" {
		return nil, errInvalid("name is required")
	}
	var err error
	if req.mode, err = chunkstore.ParseMode(req.p.Mode); err != nil {
		return nil, errInvalid("%v", err)
	}
	if req.bw, err = req.p.bandwidths(); err != nil {
		return nil, err
	}
	if req.bs, err = a.storage(ctx, req.p.BackupStorageUUID); err != nil {
		return nil, err
	}
	// The storage's tags are defaults; the backup's own win.
	var storageTags []string
	_ = json.Unmarshal([]byte(req.bs.SystemTags), &storageTags)
	if req.tags, err = ParseBackupTags(mergeTags(storageTags, c.SystemTags())); err != nil {
		return nil, errTag(err)
	}
	if req.spec, req.env, err = a.backupTarget(req.bs, req.tags); err != nil {
		return nil, errTag(err)
	}
	ut, _ := json.Marshal(c.UserTags())
	req.userTags = string(ut)
	req.job = c.jobUUID
	return &req, nil
}

// record records a backup of vrec as Creating.
func (a *API) recordBackup(ctx context.Context, req *backupRequest, id string, vrec *inventory.Volume, group string) error {
	rec := &inventory.VolumeBackup{UUID: id, VolumeUUID: vrec.UUID, Name: req.p.Name, Description: req.p.Description,
		Type: vrec.Type, State: inventory.StateEnabled, Status: inventory.StatusCreating, Size: vrec.Size, Mode: string(req.mode),
		UserTags: req.userTags, GroupUUID: group, JobUUID: req.job}
	if group != "" {
		rec.VMInstanceUUID = vrec.VMInstanceUUID
	}
	ref := inventory.BackupStorageRef{BackupStorageUUID: req.bs.UUID, InstallPath: installPath(req.spec, id), Status: inventory.StatusCreating,
		Target: refTarget(req.spec, req.bs)}
	if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
		return errInvalid("cannot record the backup: %v", err)
	}
	return nil
}

// liveOptions are the dataplane options of one backup of a request.
func (req *backupRequest) liveOptions(id string, vrec *inventory.Volume, group string, prog *dataplane.Progress) dataplane.LiveBackupOptions {
	meta := map[string]string{"name": req.p.Name, "description": req.p.Description, "backupStorageUuid": req.bs.UUID,
		"volumeType": string(vrec.Type), "parallelismDegree": strconv.Itoa(req.tags.Parallelism)}
	if group != "" {
		// A repository describes itself: a re-import finds the group.
		meta["groupUuid"], meta["vmInstanceUuid"] = group, vrec.VMInstanceUUID
	}
	return dataplane.LiveBackupOptions{ReadBytesPerSec: req.bw["volumeReadBandwidth"], Chain: chainOf(req.bs, req.spec),
		Mode: req.mode, ID: id, Parallelism: req.tags.Parallelism, Progress: prog, Meta: meta}
}

// openTarget opens a request's target, with its network limits.
func (a *API) openTarget(ctx context.Context, req *backupRequest) (*chunkstore.Repository, error) {
	return a.openRepo(ctx, req.spec, req.env, target.RepoOptions{Create: createFor(req.spec),
		WriteBytesPerSec: req.bw["networkWriteBandwidth"], ReadBytesPerSec: req.bw["networkReadBandwidth"]})
}

// finishBackup records a finished backup Ready and returns its inventory.
func (a *API) finishBackup(ctx context.Context, req *backupRequest, m *chunkstore.Manifest, seconds float64) (backupInventory, error) {
	md, _ := json.Marshal(metadataOf(m, seconds, req.bw, targetOf(req.spec, req.bs), addrString(req.env)))
	if err := a.DB.FinishVolumeBackup(ctx, m.ID, inventory.StatusReady, m.Size, string(md)); err != nil {
		return backupInventory{}, err
	}
	a.Metrics.backupDone(string(m.Mode), m.Stats.BytesRead, m.Stats.BytesStored, seconds)
	got, err := a.DB.GetVolumeBackup(ctx, m.ID)
	if err != nil {
		return backupInventory{}, err
	}
	return toBackupInventory(got), nil
}

// backupFailed drops the records of failed backups and says why.
func (a *API) backupFailed(desc string, err error, ids ...string) error {
	a.Metrics.backupFailed()
	// No inventory is left in Creating: the records go.
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range ids {
		_ = a.DB.DeleteVolumeBackup(dctx, id)
	}
	e := errFailed(desc, err)
	e.Cause = &ErrorCode{Code: CodeInternal, Description: "cause", Details: err.Error()}
	return e
}

// createVolumeBackup is CreateVolumeBackup (POST
// /volumes/{volumeUuid}/volume-backups).
func (a *API) createVolumeBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	volID := c.Path("volumeUuid")
	vrec, err := a.volume(ctx, volID)
	if err != nil {
		return nil, err
	}
	req, err := a.parseBackupRequest(ctx, c)
	if err != nil {
		return nil, err
	}
	id, err := resourceID(req.p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	qemuDisk := isQEMUPath(vrec.Path)
	vol := a.Host.Volume(volID)
	if vol == nil && !qemuDisk {
		return nil, errRefused("volume not served", "volume %s is recorded but not open on this host", volID)
	}
	if err := a.recordBackup(ctx, req, id, vrec, ""); err != nil {
		return nil, err
	}
	// The job could not be recorded: neither may the backup be.
	c.undo = func() { _ = a.DB.DeleteVolumeBackup(context.WithoutCancel(ctx), id) }
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		// The target's bandwidth limits wrap the store; the volume's read
		// limit is the backup's own. volumeWriteBandwidth limits writes to
		// the volume, which a backup does not make.
		repo, err := a.openTarget(ctx, req)
		if err != nil {
			return nil, a.backupFailed("cannot open the backup target "+req.spec.String(), err, id)
		}
		defer repo.Close()
		start := time.Now()
		var m *chunkstore.Manifest
		if qemuDisk {
			m, err = a.qemuBackup(ctx, req, repo, id, vrec, "", prog)
		} else {
			opts := req.liveOptions(id, vrec, "", prog)
			opts.Untrusted = a.untrusted(ctx)
			m, err = liveBackup(ctx, a.log(), vol, repo, req.spec, opts)
		}
		if err != nil {
			return nil, a.backupFailed("volume backup to "+req.spec.String()+" failed", err, id)
		}
		inv, err := a.finishBackup(ctx, req, m, time.Since(start).Seconds())
		if err != nil {
			return nil, a.backupFailed("cannot record the backup", err, id)
		}
		return map[string]any{"inventory": inv}, nil
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
		for _, p := range []string{fsInfoPrefix, parallelismPrefix, cidrPrefix, keyPrefix} {
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
	b, err := a.backup(ctx, c.Path("uuid"))
	if err != nil {
		return nil, err
	}
	return a.deleteJob(c, b)
}

// deleteJob checks the deletion of a backup's copies (the call's
// backupStorageUuids and deleteMode) and returns the job that makes it.
func (a *API) deleteJob(c *apiCall, b *inventory.VolumeBackup) (JobFunc, error) {
	id := b.UUID
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
