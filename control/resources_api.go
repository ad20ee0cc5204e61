package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

// Host is the daemon's live state: the volumes it serves and their NBD
// exports.
type Host struct {
	StateDir string
	NBD      *nbd.Server

	mu   sync.Mutex
	vols map[string]*dataplane.Volume
}

// OpenVolume opens path as live volume id and exports it. prepare, if
// set, runs before the export is published (a live restore starts there,
// so no client ever sees the empty volume).
func (h *Host) OpenVolume(id, path string, prepare ...func(*dataplane.Volume) error) (*dataplane.Volume, error) {
	v, err := dataplane.OpenLiveVolume(id, path, dataplane.VolumeOptions{StateDir: filepath.Join(h.StateDir, "cbt")})
	if err != nil {
		return nil, err
	}
	for _, p := range prepare {
		if err := p(v); err != nil {
			v.Close()
			return nil, err
		}
	}
	h.mu.Lock()
	if h.vols == nil {
		h.vols = map[string]*dataplane.Volume{}
	}
	h.vols[id] = v
	h.mu.Unlock()
	h.NBD.AddExport(&nbd.Export{Name: id, Description: "volback volume " + id, Backend: v})
	return v, nil
}

// Volume returns a served volume or nil.
func (h *Host) Volume(id string) *dataplane.Volume {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vols[id]
}

// CloseVolume stops exporting a volume and closes it.
func (h *Host) CloseVolume(id string) error {
	h.NBD.RemoveExport(id)
	h.mu.Lock()
	v := h.vols[id]
	delete(h.vols, id)
	h.mu.Unlock()
	if v == nil {
		return nil
	}
	return v.Close()
}

// Close closes every volume, saving their changed-block maps.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for id, v := range h.vols {
		if err := v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", id, err))
		}
	}
	h.vols = nil
	return errors.Join(errs...)
}

// apiRequest is the body of ZStack's POST APIs.
type apiRequest struct {
	Params     json.RawMessage `json:"params"`
	SystemTags []string        `json:"systemTags"`
	UserTags   []string        `json:"userTags"`
}

func parseAPIRequest(w http.ResponseWriter, r *http.Request, params any) (*apiRequest, bool) {
	var req apiRequest
	if err := decodeBody(r, &req); err != nil {
		badRequest(w, "bad JSON: "+err.Error())
		return nil, false
	}
	if len(req.Params) > 0 && params != nil {
		dec := json.NewDecoder(strings.NewReader(string(req.Params)))
		dec.UseNumber()
		if err := dec.Decode(params); err != nil {
			badRequest(w, "bad params: "+err.Error())
			return nil, false
		}
	}
	return &req, true
}

// intParam reads an integer parameter that Gson may have sent as
// 1.073741824E9; absent gives 0.
func intParam(n json.Number) (int64, error) {
	if n == "" {
		return 0, nil
	}
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<62 {
		return 0, fmt.Errorf("%q is not an integer", n)
	}
	return int64(f), nil
}

func gson(t time.Time) string { return t.Local().Format(GsonTime) }

type storageInventory struct {
	UUID              string `json:"uuid"`
	Name              string `json:"name"`
	URL               string `json:"url"`
	Hostname          string `json:"hostname,omitempty"`
	Username          string `json:"username,omitempty"`
	Type              string `json:"type"`
	State             string `json:"state"`
	Status            string `json:"status"`
	TotalCapacity     int64  `json:"totalCapacity"`
	AvailableCapacity int64  `json:"availableCapacity"`
	CreateDate        string `json:"createDate"`
	LastOpDate        string `json:"lastOpDate"`
}

func toStorageInventory(b *inventory.BackupStorage) storageInventory {
	inv := storageInventory{UUID: b.UUID, Name: b.Name, URL: b.URL, Hostname: b.Hostname, Username: b.Username,
		Type: b.Type, State: "Enabled", Status: "Connected", CreateDate: gson(b.Created), LastOpDate: gson(b.LastOp)}
	var st unix.Statfs_t
	if unix.Statfs(b.URL, &st) == nil {
		inv.TotalCapacity = int64(st.Blocks) * st.Bsize
		inv.AvailableCapacity = int64(st.Bavail) * st.Bsize
	} else {
		inv.Status = "Disconnected"
	}
	return inv
}

// addImageStore is AddImageStoreBackupStorage: the url is a local
// directory that becomes (or already is) a volback repository.
func (a *API) addImageStore(w http.ResponseWriter, r *http.Request) {
	var p struct {
		Name         string `json:"name"`
		URL          string `json:"url"`
		Hostname     string `json:"hostname"`
		Username     string `json:"username"`
		Password     string `json:"password"`
		Description  string `json:"description"`
		ResourceUUID string `json:"resourceUuid"`
	}
	req, ok := parseAPIRequest(w, r, &p)
	if !ok {
		return
	}
	if p.Name == "" || !filepath.IsAbs(p.URL) {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "name is required and url must be an absolute directory path"))
		return
	}
	id, ok := resourceID(p.ResourceUUID)
	if !ok {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "resourceUuid must be 32 lowercase hex digits"))
		return
	}
	// Tags on a storage become defaults for its backups: check them now.
	if _, err := ParseBackupTags(req.SystemTags); err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid system tag", err.Error()))
		return
	}
	tags, _ := json.Marshal(nonNil(req.SystemTags))
	a.Jobs.Start(w, r, "AddImageStoreBackupStorage", func(ctx context.Context, _ *dataplane.Progress) (any, *ErrorCode) {
		s, err := local.Open(p.URL)
		if err != nil {
			return nil, apiErr(CodeOperationFail, "cannot use the directory", err.Error())
		}
		repo, err := chunkstore.Open(ctx, s)
		if errors.Is(err, chunkstore.ErrNoRepository) {
			repo, err = chunkstore.Init(ctx, s, chunkstore.InitOptions{})
		}
		if err != nil {
			s.Close()
			return nil, apiErr(CodeOperationFail, "cannot open the repository", err.Error())
		}
		repo.Close()
		bs := &inventory.BackupStorage{UUID: id, Name: p.Name, Type: "ImageStoreBackupStorage", URL: p.URL,
			Hostname: p.Hostname, Username: p.Username, SystemTags: string(tags)}
		if err := a.DB.AddBackupStorage(ctx, bs); err != nil {
			return nil, apiErr(CodeOperationFail, "cannot record the backup storage", err.Error())
		}
		return map[string]any{"inventory": toStorageInventory(bs)}, nil
	})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

var storageSchema = Schema{Table: "backup_storages", Fields: map[string]SchemaField{
	"uuid": {Column: "uuid"}, "name": {Column: "name"}, "url": {Column: "url"}, "type": {Column: "type"},
	"hostname": {Column: "hostname"}, "createDate": {Column: "create_date", Kind: KindInt},
}}

var volumeSchema = Schema{Table: "volumes", Fields: map[string]SchemaField{
	"uuid": {Column: "uuid"}, "name": {Column: "name"}, "type": {Column: "type"}, "state": {Column: "state"},
	"status": {Column: "status"}, "size": {Column: "size", Kind: KindInt}, "installPath": {Column: "path"},
	"createDate": {Column: "create_date", Kind: KindInt},
}}

var backupSchema = Schema{Table: "volume_backups", Fields: map[string]SchemaField{
	"uuid": {Column: "uuid"}, "volumeUuid": {Column: "volume_uuid"}, "name": {Column: "name"},
	"description": {Column: "description"}, "type": {Column: "type"}, "state": {Column: "state"},
	"status": {Column: "status"}, "size": {Column: "size", Kind: KindInt}, "mode": {Column: "mode"},
	"createDate": {Column: "create_date", Kind: KindInt}, "lastOpDate": {Column: "last_op_date", Kind: KindInt},
}}

var userTagSchema = Schema{Table: "user_tags", Fields: map[string]SchemaField{
	"uuid": {Column: "uuid"}, "resourceUuid": {Column: "resource_uuid"}, "resourceType": {Column: "resource_type"},
	"tag": {Column: "tag"}, "createDate": {Column: "create_date", Kind: KindInt}, "lastOpDate": {Column: "last_op_date", Kind: KindInt},
}}

type userTagInventory struct {
	UUID         string `json:"uuid"`
	ResourceUUID string `json:"resourceUuid"`
	ResourceType string `json:"resourceType"`
	Tag          string `json:"tag"`
	Type         string `json:"type"`
	CreateDate   string `json:"createDate"`
	LastOpDate   string `json:"lastOpDate"`
}

// queryUserTags is QueryUserTag: the userTags given to CreateVolumeBackup,
// one resource each, as ZStack keeps them.
func (a *API) queryUserTags(w http.ResponseWriter, r *http.Request) {
	a.query(w, r, userTagSchema, func(ctx context.Context, ids []string) ([]any, error) {
		tags, err := a.DB.GetUserTags(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make([]any, 0, len(tags))
		for _, t := range tags {
			out = append(out, userTagInventory{UUID: t.UUID, ResourceUUID: t.ResourceUUID, ResourceType: t.ResourceType,
				Tag: t.Tag, Type: "User", CreateDate: gson(t.Created), LastOpDate: gson(t.LastOp)})
		}
		return out, nil
	})
}

// query runs a ZStack query against a table and answers {"inventories":
// [...], "total": N}; load turns a uuid into its inventory.
func (a *API) query(w http.ResponseWriter, r *http.Request, s Schema, load func(context.Context, []string) ([]any, error)) {
	q, err := ParseQuery(r.URL.Query())
	if err == nil && r.PathValue("uuid") != "" {
		q.Conditions = append(q.Conditions, Condition{Field: "uuid", Op: "=", Values: []string{r.PathValue("uuid")}})
	}
	var where, order string
	var args []any
	if err == nil {
		where, args, order, err = q.SQL(s)
	}
	if err != nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid query", err.Error()))
		return
	}
	ids, total, err := a.DB.QueryUUIDs(r.Context(), s.Table, where, args, order, q.Limit, q.Start)
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	if q.Count {
		writeZJSON(w, http.StatusOK, map[string]any{"total": total})
		return
	}
	invs, err := load(r.Context(), ids)
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	if invs == nil {
		invs = []any{}
	}
	if len(q.Fields) > 0 {
		invs = selectFields(invs, q.Fields)
	}
	body := map[string]any{"inventories": invs}
	if q.ReplyWithCount {
		body["total"] = total
	}
	writeZJSON(w, http.StatusOK, body)
}

// selectFields keeps only the named fields of each inventory.
func selectFields(invs []any, fields []string) []any {
	out := make([]any, 0, len(invs))
	for _, inv := range invs {
		b, _ := json.Marshal(inv)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		kept := map[string]any{}
		for _, f := range fields {
			if v, ok := m[f]; ok {
				kept[f] = v
			}
		}
		out = append(out, kept)
	}
	return out
}

func (a *API) queryStorages(w http.ResponseWriter, r *http.Request) {
	a.query(w, r, storageSchema, func(ctx context.Context, ids []string) ([]any, error) {
		var out []any
		for _, id := range ids {
			b, err := a.DB.GetBackupStorage(ctx, id)
			if err != nil {
				return nil, err
			}
			out = append(out, toStorageInventory(b))
		}
		return out, nil
	})
}

type volumeInventory struct {
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	Type        string `json:"type"`
	Size        int64  `json:"size"`
	State       string `json:"state"`
	Status      string `json:"status"`
	InstallPath string `json:"installPath"`
	Format      string `json:"format"`
	CreateDate  string `json:"createDate"`
	LastOpDate  string `json:"lastOpDate"`
}

func toVolumeInventory(v *inventory.Volume) volumeInventory {
	return volumeInventory{UUID: v.UUID, Name: v.Name, Type: v.Type, Size: v.Size, State: v.State, Status: v.Status,
		InstallPath: v.Path, Format: "raw", CreateDate: gson(v.Created), LastOpDate: gson(v.LastOp)}
}

func (a *API) queryVolumes(w http.ResponseWriter, r *http.Request) {
	a.query(w, r, volumeSchema, func(ctx context.Context, ids []string) ([]any, error) {
		var out []any
		for _, id := range ids {
			v, err := a.DB.GetVolume(ctx, id)
			if err != nil {
				return nil, err
			}
			out = append(out, toVolumeInventory(v))
		}
		return out, nil
	})
}

// createDataVolume is CreateDataVolume: a sparse raw file of diskSize under
// the state directory, exported over NBD at once.
func (a *API) createDataVolume(w http.ResponseWriter, r *http.Request) {
	var p struct {
		Name         string      `json:"name"`
		DiskSize     json.Number `json:"diskSize"`
		ResourceUUID string      `json:"resourceUuid"`
	}
	if _, ok := parseAPIRequest(w, r, &p); !ok {
		return
	}
	size, err := intParam(p.DiskSize)
	if err != nil || size <= 0 || size > 1<<50 {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "diskSize must be a positive number of bytes"))
		return
	}
	if p.Name == "" {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "name is required"))
		return
	}
	id, ok := resourceID(p.ResourceUUID)
	if !ok {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "resourceUuid must be 32 lowercase hex digits"))
		return
	}
	a.Jobs.Start(w, r, "CreateDataVolume", func(ctx context.Context, _ *dataplane.Progress) (any, *ErrorCode) {
		dir := filepath.Join(a.Host.StateDir, "volumes")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, apiErr(CodeOperationFail, "cannot create the volume", err.Error())
		}
		path := filepath.Join(dir, id+".raw")
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			err = f.Truncate(size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			os.Remove(path)
			return nil, apiErr(CodeOperationFail, "cannot create the volume", err.Error())
		}
		v := &inventory.Volume{UUID: id, Name: p.Name, Path: path, Size: size, Type: "Data", State: "Enabled", Status: "Ready"}
		if err := a.DB.AddVolume(ctx, v); err != nil {
			os.Remove(path)
			return nil, apiErr(CodeOperationFail, "cannot record the volume", err.Error())
		}
		if _, err := a.Host.OpenVolume(id, path); err != nil {
			return nil, apiErr(CodeOperationFail, "cannot export the volume", err.Error())
		}
		return map[string]any{"inventory": toVolumeInventory(v)}, nil
	})
}

// storageOrFail loads a backup storage, answering the request with
// SYS.1003 (unknown) or SYS.1000 if it cannot.
func (a *API) storageOrFail(w http.ResponseWriter, ctx context.Context, id string) (*inventory.BackupStorage, bool) {
	bs, err := a.DB.GetBackupStorage(ctx, id)
	if errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "no backup storage "+id))
		return nil, false
	}
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return nil, false
	}
	return bs, true
}

// deleteBackupStorage is DeleteBackupStorage: the record goes, together
// with the inventory of its backups; the repository stays on disk, so it
// can be added again (or to another daemon) later.
func (a *API) deleteBackupStorage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("uuid")
	if _, ok := a.storageOrFail(w, r.Context(), id); !ok {
		return
	}
	a.Jobs.Start(w, r, "DeleteBackupStorage", func(ctx context.Context, _ *dataplane.Progress) (any, *ErrorCode) {
		if err := a.DB.DeleteBackupStorageAndBackups(ctx, id); err != nil && !errors.Is(err, inventory.ErrNotFound) {
			return nil, apiErr(CodeOperationFail, "cannot delete the backup storage", err.Error())
		}
		return map[string]any{}, nil
	})
}

// deleteDataVolume is DeleteDataVolume: refused while NBD clients are
// attached; the file goes if the daemon created it.
func (a *API) deleteDataVolume(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("uuid")
	v, err := a.DB.GetVolume(r.Context(), id)
	if errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeNotFound, "resource not found", "no volume "+id))
		return
	} else if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	if n := a.Host.NBD.ConnectionsTo(id); n > 0 {
		a.fail(w, apiErr(CodeOperationFail, "volume in use", fmt.Sprintf("%d NBD connections are attached to volume %s", n, id)))
		return
	}
	a.Jobs.Start(w, r, "DeleteDataVolume", func(ctx context.Context, _ *dataplane.Progress) (any, *ErrorCode) {
		if err := a.Host.CloseVolume(id); err != nil {
			return nil, apiErr(CodeOperationFail, "cannot close the volume", err.Error())
		}
		if err := a.DB.DeleteVolume(ctx, id); err != nil && !errors.Is(err, inventory.ErrNotFound) {
			return nil, apiErr(CodeOperationFail, "cannot delete the volume record", err.Error())
		}
		owned := filepath.Join(a.Host.StateDir, "volumes", id+".raw")
		if v.Path == owned {
			os.Remove(owned)
			os.Remove(filepath.Join(a.Host.StateDir, "cbt", id+".cbt"))
			os.Remove(restoreStatePath(a.Host.StateDir, id))
		}
		return map[string]any{}, nil
	})
}

// resourceID returns the requested resourceUuid, or a fresh one when none
// was given; ok is false for a malformed one.
func resourceID(requested string) (id string, ok bool) {
	if requested == "" {
		return chunkstore.NewID(), true
	}
	return requested, chunkstore.ValidID(requested) == nil
}
