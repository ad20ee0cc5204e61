package control

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/nbdexport"
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
	h.NBD.AddExport(&nbd.Export{Name: id, Description: "volback volume " + id, Backend: nbdexport.Volume{Volume: v}})
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

// createVolumeFile creates the sparse raw file of a new volume under the
// state directory, failing if it exists.
func (h *Host) createVolumeFile(id string, size int64) (string, error) {
	path := h.ownedPath(id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// ownedPath is where the daemon keeps the file of a volume it created.
func (h *Host) ownedPath(id string) string { return filepath.Join(h.StateDir, "volumes", id+".raw") }

// restoreStatePath is the state file of a volume's live restore.
func (h *Host) restoreStatePath(id string) string {
	return filepath.Join(h.StateDir, "restore", id+".json")
}

// removeOwnedFiles removes a deleted volume's file, if the daemon created
// it, with its changed-block and restore state.
func (h *Host) removeOwnedFiles(id, path string) {
	if path != h.ownedPath(id) {
		return
	}
	os.Remove(path)
	os.Remove(filepath.Join(h.StateDir, "cbt", id+".cbt"))
	os.Remove(h.restoreStatePath(id))
}

// refuseAttached is SYS.1006 while NBD clients are attached to a volume,
// unless forced: they would see their disk change or vanish under them.
func (h *Host) refuseAttached(id, doing string, force bool) error {
	if n := h.NBD.ConnectionsTo(id); n > 0 && !force {
		return errRefused("volume in use", "volume %s has %d NBD clients connected; disconnect them before you %s", id, n, doing)
	}
	return nil
}

// Volumes returns every served volume, by id.
func (h *Host) Volumes() []*dataplane.Volume {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*dataplane.Volume, 0, len(h.vols))
	for _, v := range h.vols {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
