package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
)

// LocalAPI is the small administrative API the daemon offers on a Unix
// socket (with or without the ZStack API), so that `volback backup --live`
// can back up an exported volume into any repository. Access control is
// the socket's file mode (0600).
//
// A backup it starts runs under the daemon's lifetime, not the request's:
// a client that goes away leaves it running to its end; DELETE
// /v1/backups/{id} cancels it.
type LocalAPI struct {
	api *API            // the volumes, inventory, opener and log it shares
	ctx context.Context // the daemon's

	mu      sync.Mutex
	running map[string]*runningBackup
	wg      sync.WaitGroup
}

type runningBackup struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// LocalBackupRequest asks for a live backup into a repository: a
// directory, nfs:// or s3:// URL.
type LocalBackupRequest struct {
	Repo        string            `json:"repo"`
	Mode        string            `json:"mode,omitempty"`
	Parallelism int               `json:"parallelism,omitempty"`
	ID          string            `json:"id,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
	// ReadBytesPerSec limits how fast the volume is read (0: no limit).
	ReadBytesPerSec int64 `json:"readBytesPerSec,omitempty"`
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
	mux.HandleFunc("DELETE /v1/backups/{id}", a.cancel)
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
	vols := a.api.Host.Volumes()
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
	volID := r.PathValue("id")
	v := a.api.Host.Volume(volID)
	if v == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no volume %q is served here", volID))
		return
	}
	var req LocalBackupRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("bad request body: %w", err))
		return
	}
	if req.Parallelism < 0 || req.Parallelism > MaxParallelism {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("parallelism must be from 0 to %d", MaxParallelism))
		return
	}
	if req.ReadBytesPerSec < 0 || (req.ReadBytesPerSec > 0 && req.ReadBytesPerSec < 1024) {
		writeErr(w, http.StatusBadRequest, errors.New("readBytesPerSec must be at least 1024 when set"))
		return
	}
	mode, err := chunkstore.ParseMode(req.Mode)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	spec, err := target.ParseURL(req.Repo)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if req.ID == "" {
		req.ID = chunkstore.NewID()
	} else if err := chunkstore.ValidID(req.ID); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := context.WithCancel(a.ctx)
	rb := &runningBackup{cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	if a.running == nil {
		a.running = map[string]*runningBackup{}
	}
	if a.running[req.ID] != nil {
		a.mu.Unlock()
		cancel()
		writeErr(w, http.StatusConflict, fmt.Errorf("backup %s is already running", req.ID))
		return
	}
	a.running[req.ID] = rb
	a.wg.Add(1)
	a.mu.Unlock()

	type outcome struct {
		reply  LocalBackupReply
		status int
		err    error
	}
	res := make(chan outcome, 1)
	go func() {
		defer a.wg.Done()
		defer close(rb.done)
		defer func() {
			a.mu.Lock()
			delete(a.running, req.ID)
			a.mu.Unlock()
			cancel()
		}()
		start := time.Now()
		m, err := a.run(ctx, v, spec, req, mode)
		switch {
		case errors.Is(err, dataplane.ErrBackupRunning):
			res <- outcome{status: http.StatusConflict, err: err}
		case err != nil && ctx.Err() != nil:
			res <- outcome{status: http.StatusGone, err: fmt.Errorf("backup %s of volume %s cancelled: %w", req.ID, volID, err)}
		case err != nil:
			res <- outcome{status: http.StatusInternalServerError, err: err}
		default:
			res <- outcome{status: http.StatusOK, reply: LocalBackupReply{
				ID: m.ID, VolumeID: m.VolumeID, Size: m.Size, Parent: m.Parent, Mode: string(m.Mode),
				Seconds: time.Since(start).Seconds(), Stats: m.Stats, Meta: m.Meta}}
		}
	}()
	select {
	case o := <-res:
		if o.err != nil {
			writeErr(w, o.status, o.err)
			return
		}
		writeJSON(w, http.StatusOK, o.reply)
	case <-r.Context().Done():
		a.log().Info("the client of a live backup went away; the backup goes on", "volume", volID, "backup", req.ID)
	}
}

// run opens the repository and takes the backup, logged as the API's are.
func (a *LocalAPI) run(ctx context.Context, v *dataplane.Volume, spec target.Spec, req LocalBackupRequest, mode chunkstore.Mode) (*chunkstore.Manifest, error) {
	repo, err := a.api.openRepo(ctx, spec, a.api.TargetEnv, target.RepoOptions{})
	if err != nil {
		a.log().Error("live backup failed", "volume", v.ID, "backup", req.ID, "target", spec.String(), "err", err)
		return nil, err
	}
	defer repo.Close()
	chain, err := chainFor(ctx, a.api.DB, spec, repo)
	if err != nil {
		return nil, err
	}
	return liveBackup(ctx, a.log(), v, repo, spec, dataplane.LiveBackupOptions{
		Chain: chain, Mode: mode, ID: req.ID, Parallelism: req.Parallelism, Meta: req.Meta, ReadBytesPerSec: req.ReadBytesPerSec,
	})
}

// cancel is DELETE /v1/backups/{id}: it cancels a running backup and
// answers when it has stopped.
func (a *LocalAPI) cancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.mu.Lock()
	rb := a.running[id]
	a.mu.Unlock()
	if rb == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no backup %s is running", id))
		return
	}
	rb.cancel()
	select {
	case <-rb.done:
	case <-r.Context().Done():
		return
	}
	a.log().Info("live backup cancelled by its client", "backup", id)
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "cancelled": true})
}

// wait waits for running backups; the daemon's context is done by then.
func (a *LocalAPI) wait() { a.wg.Wait() }

func (a *LocalAPI) log() *slog.Logger { return a.api.log() }

// liveBackup takes a live backup of v into repo with the daemon's logging:
// at start, end, failure and conflict. Every live backup goes through it,
// from the API's jobs and from the admin socket.
func liveBackup(ctx context.Context, log *slog.Logger, v *dataplane.Volume, repo *chunkstore.Repository, spec target.Spec, opts dataplane.LiveBackupOptions) (*chunkstore.Manifest, error) {
	log.Info("live backup started", "volume", v.ID, "backup", opts.ID, "target", spec.String(), "chain", opts.Chain, "mode", opts.Mode)
	start := time.Now()
	m, err := v.Backup(ctx, repo, opts)
	switch {
	case errors.Is(err, dataplane.ErrBackupRunning):
		log.Warn("live backup refused: another backup of the volume to this chain is running", "volume", v.ID, "backup", opts.ID, "chain", opts.Chain)
	case err != nil:
		log.Error("live backup failed", "volume", v.ID, "backup", opts.ID, "target", spec.String(), "err", err)
	default:
		log.Info("live backup done", "volume", v.ID, "backup", m.ID, "mode", m.Mode, "bytesRead", m.Stats.BytesRead,
			"bytesStored", m.Stats.BytesStored, "seconds", time.Since(start).Seconds(), "fullReason", m.Meta["fullReason"])
	}
	return m, err
}
