package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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
		Type: b.Type, State: b.State, Status: b.Status, Size: b.Size, Metadata: b.Metadata, Mode: b.Mode,
		CreateDate: gson(b.Created), LastOpDate: gson(b.LastOp), BackupStorageRefs: []backupRefInventory{}}
	for _, r := range b.Refs {
		inv.BackupStorageRefs = append(inv.BackupStorageRefs, backupRefInventory{VolumeBackupUUID: r.VolumeBackupUUID,
			BackupStorageUUID: r.BackupStorageUUID, InstallPath: r.InstallPath, Status: r.Status,
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
	return backupMetadata{Mode: m.Mode, Parent: m.Parent, BytesRead: m.Stats.BytesRead,
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

// createVolumeBackup is CreateVolumeBackup (POST
// /zstack/v1/volumes/{volumeUuid}/volume-backups).
func (a *API) createVolumeBackup(w http.ResponseWriter, r *http.Request) {
	var p struct {
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
	req, ok := parseAPIRequest(w, r, &p)
	if !ok {
		return
	}
	ticket, ok := a.Jobs.Accept(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	volID := r.PathValue("volumeUuid")
	vrec, err := a.DB.GetVolume(ctx, volID)
	if errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "no volume "+volID))
		return
	}
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	if p.Name == "" {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "name is required"))
		return
	}
	switch p.Mode {
	case "":
		p.Mode = dataplane.ModeAuto
	case dataplane.ModeAuto, dataplane.ModeFull, dataplane.ModeIncremental:
	default:
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", fmt.Sprintf("mode %q: want full, incremental or auto", p.Mode)))
		return
	}
	bw := map[string]int64{}
	for name, n := range map[string]json.Number{"volumeReadBandwidth": p.VolumeReadBandwidth, "volumeWriteBandwidth": p.VolumeWriteBandwidth,
		"networkReadBandwidth": p.NetworkReadBandwidth, "networkWriteBandwidth": p.NetworkWriteBandwidth} {
		v, err := intParam(n)
		if err != nil || (n != "" && v < 1024) {
			a.fail(w, apiErr(CodeInvalidArg, "invalid argument", name+" must be at least 1024 bytes per second"))
			return
		}
		bw[name] = v
	}
	bs, ok := a.storageOrFail(w, ctx, p.BackupStorageUUID)
	if !ok {
		return
	}
	// The storage's tags are defaults; the backup's own win.
	var storageTags []string
	_ = json.Unmarshal([]byte(bs.SystemTags), &storageTags)
	tags, err := ParseBackupTags(mergeTags(storageTags, req.SystemTags))
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	spec, env, err := a.backupTarget(bs, tags)
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	id, ok := resourceID(p.ResourceUUID)
	if !ok {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "resourceUuid must be 32 lowercase hex digits"))
		return
	}
	vol := a.Host.Volume(volID)
	if vol == nil {
		a.fail(w, apiErr(CodeOperationFail, "volume not served", "volume "+volID+" is recorded but not open on this host"))
		return
	}
	userTags, _ := json.Marshal(nonNil(req.UserTags))
	rec := &inventory.VolumeBackup{UUID: id, VolumeUUID: volID, Name: p.Name, Description: p.Description,
		Type: vrec.Type, State: "Enabled", Status: "Creating", Size: vrec.Size, Mode: p.Mode, UserTags: string(userTags)}
	ref := inventory.BackupStorageRef{BackupStorageUUID: bs.UUID, InstallPath: installPath(spec, id), Status: "Creating"}
	if spec != storageSpec(bs) {
		tj, _ := json.Marshal(spec)
		ref.Target = string(tj)
	}
	if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "cannot record the backup", err.Error()))
		return
	}
	started := a.Jobs.Launch(w, r, ticket, "CreateVolumeBackup", func(ctx context.Context, prog *dataplane.Progress) (any, *ErrorCode) {
		fail := func(desc string, err error) (any, *ErrorCode) {
			a.Metrics.backupFailed()
			// No inventory is left in Creating: the record goes.
			dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = a.DB.DeleteVolumeBackup(dctx, id)
			return nil, &ErrorCode{Code: CodeOperationFail, Description: desc, Details: err.Error(),
				Cause: apiErr(CodeInternal, "cause", err.Error())}
		}
		// The target's bandwidth limits wrap the store; the volume's read
		// limit is the backup's own. volumeWriteBandwidth limits writes to
		// the volume, which a backup does not make.
		repo, err := a.openTarget(ctx, spec, env, bw["networkWriteBandwidth"], bw["networkReadBandwidth"])
		if err != nil {
			return fail("cannot open the backup target "+spec.String(), err)
		}
		defer repo.Close()
		start := time.Now()
		m, err := vol.Backup(ctx, repo, dataplane.LiveBackupOptions{
			ReadBytesPerSec: bw["volumeReadBandwidth"],
			Chain:           chainOf(bs, spec), Mode: p.Mode, ID: id, Parallelism: tags.Parallelism, Progress: prog,
			Meta: map[string]string{"name": p.Name, "description": p.Description, "backupStorageUuid": bs.UUID, "volumeType": vrec.Type,
				"parallelismDegree": strconv.Itoa(tags.Parallelism)},
		})
		if err != nil {
			return fail("volume backup to "+spec.String()+" failed", err)
		}
		md, _ := json.Marshal(metadataOf(m, time.Since(start).Seconds(), bw, targetOf(spec, bs), addrString(env)))
		if err := a.DB.FinishVolumeBackup(ctx, id, "Ready", m.Size, string(md)); err != nil {
			return fail("cannot record the backup", err)
		}
		a.Metrics.backupDone(m.Mode, m.Stats.BytesRead, m.Stats.BytesStored, time.Since(start).Seconds())
		got, err := a.DB.GetVolumeBackup(ctx, id)
		if err != nil {
			return fail("cannot read the backup back", err)
		}
		return map[string]any{"inventory": toBackupInventory(got)}, nil
	})
	if !started {
		// The job could not be recorded: neither may the backup be.
		_ = a.DB.DeleteVolumeBackup(context.WithoutCancel(ctx), id)
	}
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

func (a *API) queryVolumeBackups(w http.ResponseWriter, r *http.Request) {
	a.query(w, r, backupSchema, func(ctx context.Context, ids []string) ([]any, error) {
		if len(ids) == 0 {
			return nil, nil
		}
		args := make([]any, len(ids))
		ph := ""
		for i, id := range ids {
			args[i] = id
			if i > 0 {
				ph += ","
			}
			ph += "?"
		}
		got, _, err := a.DB.QueryVolumeBackups(ctx, " WHERE uuid IN ("+ph+")", args, "", len(ids), 0)
		if err != nil {
			return nil, err
		}
		byID := map[string]*inventory.VolumeBackup{}
		for _, b := range got {
			byID[b.UUID] = b
		}
		out := make([]any, 0, len(ids))
		for _, id := range ids { // keep the query's order
			if b := byID[id]; b != nil {
				out = append(out, toBackupInventory(b))
			}
		}
		return out, nil
	})
}

// deleteVolumeBackup is DeleteVolumeBackup: the manifest goes; its chunks
// stay until a garbage collection finds nothing using them.
func (a *API) deleteVolumeBackup(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("uuid")
	b, err := a.DB.GetVolumeBackup(r.Context(), id)
	if errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "no volume backup "+id))
		return
	}
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	a.Jobs.Start(w, r, "DeleteVolumeBackup", func(ctx context.Context, _ *dataplane.Progress) (any, *ErrorCode) {
		if a.exports != nil {
			a.exports.drop(id)
		}
		for _, ref := range b.Refs {
			bs, err := a.DB.GetBackupStorage(ctx, ref.BackupStorageUUID)
			if err != nil {
				continue // storage gone: nothing to remove there
			}
			spec, err := refSpec(ref, bs)
			if err != nil {
				return nil, apiErr(CodeInternal, "internal error", err.Error())
			}
			repo, err := a.openTarget(ctx, spec, a.TargetEnv, 0, 0)
			if err != nil {
				return nil, apiErr(CodeOperationFail, "cannot open the backup target "+spec.String(), err.Error())
			}
			err = repo.DeleteManifest(ctx, id)
			repo.Close()
			if err != nil && !errors.Is(err, chunkstore.ErrNotFound) {
				return nil, apiErr(CodeOperationFail, "cannot delete the backup", err.Error())
			}
		}
		if err := a.DB.DeleteVolumeBackup(ctx, id); err != nil && !errors.Is(err, inventory.ErrNotFound) {
			return nil, apiErr(CodeOperationFail, "cannot delete the backup record", err.Error())
		}
		return map[string]any{}, nil
	})
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
