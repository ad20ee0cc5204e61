package control

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

type volumeInventory struct {
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	Type        string `json:"type"`
	Size        int64  `json:"size"`
	State       string `json:"state"`
	Status      string `json:"status"`
	InstallPath string `json:"installPath"`
	Format      string `json:"format"`
	VMInstance  string `json:"vmInstanceUuid,omitempty"`
	CreateDate  string `json:"createDate"`
	LastOpDate  string `json:"lastOpDate"`
}

func toVolumeInventory(v *inventory.Volume) volumeInventory {
	return volumeInventory{UUID: v.UUID, Name: v.Name, Type: string(v.Type), Size: v.Size, State: string(v.State),
		Status: string(v.Status), InstallPath: v.Path, Format: "raw", VMInstance: v.VMInstanceUUID, CreateDate: gson(v.Created), LastOpDate: gson(v.LastOp)}
}

// volume loads a volume record: SYS.1003 if there is none.
func (a *API) volume(ctx context.Context, id string) (*inventory.Volume, error) {
	v, err := a.DB.GetVolume(ctx, id)
	return v, notFoundOr(err, "no volume %s", id)
}

// resourceID returns the requested resourceUuid, or a fresh one when none
// was given; a malformed one is SYS.1007.
func resourceID(requested string) (string, error) {
	if requested == "" {
		return chunkstore.NewID(), nil
	}
	if chunkstore.ValidID(requested) != nil {
		return "", errInvalid("resourceUuid must be 32 lowercase hex digits")
	}
	return requested, nil
}

// queryVolumes is QueryVolume (GET /volumes[/{uuid}]).
func (a *API) queryVolumes(ctx context.Context, c *apiCall) (any, error) {
	return a.query(ctx, c, inventory.Volumes, loadEach(a.DB.GetVolume,
		func(v *inventory.Volume) any { return toVolumeInventory(v) }))
}

// createDataVolume is CreateDataVolume (POST /volumes/data): a sparse raw
// file of diskSize under the state directory, exported over NBD at once.
func (a *API) createDataVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p struct {
		Name         string      `json:"name"`
		DiskSize     json.Number `json:"diskSize"`
		ResourceUUID string      `json:"resourceUuid"`
	}
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, errInvalid("name is required")
	}
	id, err := resourceID(p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	if disk, ok := qemuVolumeTag(c.SystemTags()); ok {
		// A disk QEMU holds: recorded, not created (diskSize, if given,
		// must be the disk's).
		want, _ := intParam(p.DiskSize)
		return a.addQEMUVolume(id, p.Name, disk, want)
	}
	size, err := intParam(p.DiskSize)
	if err != nil || size <= 0 || size > 1<<50 {
		return nil, errInvalid("diskSize must be a positive number of bytes")
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		path, err := a.Host.createVolumeFile(id, size)
		if err != nil {
			return nil, errFailed("cannot create the volume", err)
		}
		if _, err := a.Host.OpenVolume(id, path); err != nil {
			os.Remove(path)
			return nil, errFailed("cannot export the volume", err)
		}
		// Recorded once exported: a volume a client finds is one it can
		// attach.
		v := &inventory.Volume{UUID: id, Name: p.Name, Path: path, Size: size, Type: inventory.VolumeData,
			State: inventory.StateEnabled, Status: inventory.StatusReady}
		if err := a.DB.AddVolume(ctx, v); err != nil {
			_ = a.Host.CloseVolume(id)
			os.Remove(path)
			os.Remove(filepath.Join(a.Host.StateDir, "cbt", id+".cbt"))
			return nil, errFailed("cannot record the volume", err)
		}
		return map[string]any{"inventory": toVolumeInventory(v)}, nil
	}, nil
}

// deleteDataVolume is DeleteDataVolume (DELETE /volumes/{uuid}): refused
// while NBD clients are attached; the file goes if the daemon created it.
func (a *API) deleteDataVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	id := c.Path("uuid")
	v, err := a.volume(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := a.Host.refuseAttached(id, "delete it", false); err != nil {
		return nil, err
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		if err := a.Host.CloseVolume(id); err != nil {
			return nil, errFailed("cannot close the volume", err)
		}
		if err := a.DB.DeleteVolume(ctx, id); err != nil && !isNotFound(err) {
			return nil, errFailed("cannot delete the volume record", err)
		}
		a.Host.removeOwnedFiles(id, v.Path)
		return map[string]any{}, nil
	}, nil
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
