package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

// ServeConfig configures Serve.
type ServeConfig struct {
	// StateDir holds the NBD and admin sockets and the changed-block maps.
	StateDir string
	// Volumes maps volume ids (export names) to files or block devices.
	Volumes map[string]string
	// NBDListen is unix:///PATH or tcp://HOST:PORT; default
	// unix://<StateDir>/nbd.sock.
	NBDListen string
	// AdminSocket is the Unix socket of the local admin API; default
	// <StateDir>/control.sock.
	AdminSocket string
	Logger      *slog.Logger
	// Ready, if set, is called once everything listens.
	Ready func()
	// Repo and Backups: backups of Repo to export read-only, each under
	// its backup id.
	Repo    *chunkstore.Repository
	Backups []string
}

var volumeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ParseVolumeFlag parses UUID=PATH.
func ParseVolumeFlag(s string) (id, path string, err error) {
	id, path, ok := strings.Cut(s, "=")
	if !ok || path == "" {
		return "", "", fmt.Errorf("--volume %q: want UUID=PATH", s)
	}
	if !volumeIDPattern.MatchString(id) {
		return "", "", fmt.Errorf("--volume %q: volume id must be letters, digits, '.', '_' or '-'", s)
	}
	return id, path, nil
}

// ParseVolumeFlags parses repeated UUID=PATH flags; a UUID given twice is
// an error.
func ParseVolumeFlags(flags []string) (map[string]string, error) {
	vols := map[string]string{}
	for _, f := range flags {
		id, path, err := ParseVolumeFlag(f)
		if err != nil {
			return nil, err
		}
		if _, dup := vols[id]; dup {
			return nil, fmt.Errorf("--volume %s given twice", id)
		}
		vols[id] = path
	}
	return vols, nil
}

// Serve exports the volumes over NBD and offers the local admin API until
// ctx is done, then stops accepting, waits for requests in flight, and
// closes every volume cleanly (persisting its changed-block maps).
func Serve(ctx context.Context, cfg ServeConfig) (err error) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "volback-data"
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	if cfg.NBDListen == "" {
		cfg.NBDListen = "unix://" + filepath.Join(cfg.StateDir, "nbd.sock")
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.StateDir, "control.sock")
	}

	var mu sync.Mutex
	vols := map[string]*dataplane.Volume{}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for id, v := range vols {
			if cerr := v.Close(); cerr != nil {
				log.Error("closing volume", "volume", id, "err", cerr)
				err = errors.Join(err, cerr)
			}
		}
	}()
	srv := nbd.NewServer()
	srv.Logger = log
	ids := make([]string, 0, len(cfg.Volumes))
	for id := range cfg.Volumes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		v, err := dataplane.OpenLiveVolume(id, cfg.Volumes[id], dataplane.VolumeOptions{StateDir: filepath.Join(cfg.StateDir, "cbt")})
		if err != nil {
			return err
		}
		mu.Lock()
		vols[id] = v
		mu.Unlock()
		srv.AddExport(&nbd.Export{Name: id, Description: "volback volume " + id, Backend: v})
		log.Info("exporting volume", "volume", id, "path", cfg.Volumes[id], "size", v.Size())
	}

	for _, id := range cfg.Backups {
		if cfg.Repo == nil {
			return errors.New("backups to export, but no repository")
		}
		m, err := cfg.Repo.LoadManifest(ctx, id)
		if err != nil {
			return err
		}
		im := dataplane.OpenImage(cfg.Repo, m, dataplane.ImageOptions{})
		defer im.Close()
		srv.AddExport(&nbd.Export{Name: id, Description: "volback backup " + id + " of volume " + m.VolumeID, ReadOnly: true,
			Backend: dataplane.ImageBackend{Image: im}})
		log.Info("exporting backup read-only", "backup", id, "volume", m.VolumeID, "size", m.Size, "repo", cfg.Repo.Location())
	}

	nl, err := nbd.Listen(cfg.NBDListen)
	if err != nil {
		return err
	}
	al, err := nbd.Listen("unix://" + cfg.AdminSocket)
	if err != nil {
		nl.Close()
		return fmt.Errorf("admin socket: %w", err)
	}
	api := &LocalAPI{
		Volumes: func(id string) *dataplane.Volume { mu.Lock(); defer mu.Unlock(); return vols[id] },
		List: func() []*dataplane.Volume {
			mu.Lock()
			defer mu.Unlock()
			out := make([]*dataplane.Volume, 0, len(vols))
			for _, v := range vols {
				out = append(out, v)
			}
			return out
		},
	}
	hs := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx, nl) }()
	go func() {
		if err := hs.Serve(al); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	log.Info("serving", "nbd", cfg.NBDListen, "admin", "unix://"+cfg.AdminSocket)
	if cfg.Ready != nil {
		cfg.Ready()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	log.Info("shutting down")
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	<-errc
	if err == nil {
		<-errc
	}
	os.Remove(cfg.AdminSocket)
	if strings.HasPrefix(cfg.NBDListen, "unix://") {
		os.Remove(strings.TrimPrefix(cfg.NBDListen, "unix://"))
	}
	return err
}
