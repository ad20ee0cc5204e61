package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
)

// LocalAPI is the small administrative API that `volback serve` offers on
// a Unix socket, so that `volback backup --live` can back up an exported
// volume before (and without) the ZStack-compatible API. Access control is
// the socket's file mode (0600).
type LocalAPI struct {
	// Volumes returns the live volume with the given id, or nil.
	Volumes func(id string) *dataplane.Volume
	// List returns every live volume.
	List func() []*dataplane.Volume
}

// LocalBackupRequest asks for a live backup into a local repository.
type LocalBackupRequest struct {
	Repo        string            `json:"repo"`
	Mode        string            `json:"mode,omitempty"`
	Parallelism int               `json:"parallelism,omitempty"`
	ID          string            `json:"id,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
}

// LocalBackupReply is the finished backup.
type LocalBackupReply struct {
	ID       string            `json:"id"`
	VolumeID string            `json:"volumeId"`
	Size     int64             `json:"size"`
	Parent   string            `json:"parent,omitempty"`
	Mode     string            `json:"mode"`
	Seconds  float64           `json:"seconds"`
	Stats    chunkstore.Stats  `json:"stats"`
	Meta     map[string]string `json:"meta,omitempty"`
}

// LocalVolume describes a live volume.
type LocalVolume struct {
	ID     string       `json:"id"`
	Path   string       `json:"path"`
	Size   int64        `json:"size"`
	Chains []LocalChain `json:"chains"`
}

// LocalChain describes one changed-block chain of a volume.
type LocalChain struct {
	Name       string `json:"name"`
	LastBackup string `json:"lastBackup,omitempty"`
	Invalid    string `json:"invalid,omitempty"`
	DirtyBytes int64  `json:"dirtyBytes"`
}

// Handler returns the API's routes.
func (a *LocalAPI) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", a.listVolumes)
	mux.HandleFunc("POST /v1/volumes/{id}/backups", a.backup)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func (a *LocalAPI) listVolumes(w http.ResponseWriter, _ *http.Request) {
	vols := a.List()
	out := make([]LocalVolume, 0, len(vols))
	for _, v := range vols {
		lv := LocalVolume{ID: v.ID, Path: v.Path(), Size: v.Size(), Chains: []LocalChain{}}
		for _, name := range v.Chains() {
			last, invalid, dirty, _ := v.ChainState(name)
			lv.Chains = append(lv.Chains, LocalChain{Name: name, LastBackup: last, Invalid: invalid, DirtyBytes: dirty})
		}
		out = append(out, lv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, out)
}

func (a *LocalAPI) backup(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	v := a.Volumes(id)
	if v == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no volume %q is served here", id))
		return
	}
	var req LocalBackupRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return
	}
	if req.Repo == "" {
		writeErr(w, http.StatusBadRequest, errors.New("repo is required"))
		return
	}
	if req.Parallelism < 0 || req.Parallelism > MaxParallelism {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("parallelism must be from 0 to %d", MaxParallelism))
		return
	}
	repo, err := local.OpenRepository(r.Context(), req.Repo)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	defer repo.Close()
	start := time.Now()
	m, err := v.Backup(r.Context(), repo, dataplane.LiveBackupOptions{
		// One chain per repository: backups into two repositories never
		// steal each other's changes.
		Chain: repo.Config().ID, Mode: req.Mode, ID: req.ID,
		Parallelism: req.Parallelism, Meta: req.Meta,
	})
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, dataplane.ErrBackupRunning) {
			status = http.StatusConflict
		}
		writeErr(w, status, err)
		return
	}
	writeJSON(w, http.StatusOK, LocalBackupReply{
		ID: m.ID, VolumeID: m.VolumeID, Size: m.Size, Parent: m.Parent, Mode: m.Mode,
		Seconds: time.Since(start).Seconds(), Stats: m.Stats, Meta: m.Meta,
	})
}
