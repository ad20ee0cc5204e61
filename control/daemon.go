package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/nbd"
)

// DaemonConfig configures RunDaemon.
type DaemonConfig struct {
	StateDir  string            // default "volback-data"
	Listen    string            // API address, default 127.0.0.1:8080
	NBDListen string            // default unix://<StateDir>/nbd.sock
	Volumes   map[string]string // existing images or devices to register: uuid -> path
	// AdminPassword is the admin account's password (plain); default
	// "password", as ZStack's.
	AdminPassword string
	Logger        *slog.Logger
	// S3AccessKeyID and S3SecretAccessKey are the credentials for S3
	// targets; empty means the standard AWS chain (environment, shared
	// config, instance role). Never logged.
	S3AccessKeyID, S3SecretAccessKey string
	// GCInterval is how often every backup storage is garbage collected;
	// 0 means never (ReclaimSpaceFromImageStore still runs one).
	GCInterval time.Duration
	// Ready, if set, is called with the API's address once it listens.
	Ready func(apiAddr string)
}

// adminAccountUUID is the admin account's fixed uuid.
const adminAccountUUID = "36c27e8ff05c4780bf6d2fa65700f22e"

// RunDaemon runs the daemon until ctx is done: the ZStack-compatible API,
// every known volume exported over NBD, backup jobs, state under StateDir.
// On the way out running jobs are cancelled (and recorded failed), NBD
// connections finish, and every volume's changed-block maps are saved.
func RunDaemon(ctx context.Context, cfg DaemonConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "volback-data"
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8080"
	}
	if cfg.AdminPassword == "" {
		cfg.AdminPassword = "password"
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	// Paths recorded in the inventory must not depend on the working
	// directory of the next start.
	if cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return err
	}
	if cfg.NBDListen == "" {
		cfg.NBDListen = "unix://" + filepath.Join(cfg.StateDir, "nbd.sock")
	}
	db, err := inventory.Open(ctx, filepath.Join(cfg.StateDir, "inventory.db"), nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.EnsureAccount(ctx, adminAccountUUID, "admin", inventory.HashPassword(cfg.AdminPassword)); err != nil {
		return err
	}
	failed, _ := json.Marshal(map[string]*ErrorCode{"error": apiErr(CodeOperationFail, "operation failed",
		"the daemon stopped while this job was running")})
	if n, err := db.FailRunningJobs(ctx, failed); err != nil {
		return err
	} else if n > 0 {
		log.Warn("jobs interrupted by the last stop are recorded failed", "jobs", n)
	}
	env := target.Env{S3AccessKeyID: cfg.S3AccessKeyID, S3SecretAccessKey: cfg.S3SecretAccessKey}
	if ids, err := db.AbandonCreatingBackups(ctx); err != nil {
		return err
	} else if len(ids) > 0 {
		log.Warn("backups left unfinished by the last stop are dropped from the inventory", "backups", strings.Join(ids, ","))
		go dropMarkers(ctx, db, env, ids, log)
	}

	if err := ensureDefaultStore(ctx, db, cfg.StateDir, log); err != nil {
		return err
	}

	srv := nbd.NewServer()
	srv.Logger = log
	host := &Host{StateDir: cfg.StateDir, NBD: srv}
	defer func() {
		if cerr := host.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	ids := make([]string, 0, len(cfg.Volumes))
	for id := range cfg.Volumes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := chunkstore.ValidID(id); err != nil {
			return fmt.Errorf("--volume %s: %w", id, err)
		}
		path, err := filepath.Abs(cfg.Volumes[id])
		if err != nil {
			return err
		}
		if _, err := db.GetVolume(ctx, id); errors.Is(err, inventory.ErrNotFound) {
			size, err := volumeSizeOf(path)
			if err != nil {
				return fmt.Errorf("--volume %s: %w", id, err)
			}
			if err := db.AddVolume(ctx, &inventory.Volume{UUID: id, Name: filepath.Base(path), Path: path, Size: size,
				Type: "Root", State: "Enabled", Status: "Ready"}); err != nil {
				return err
			}
		}
	}
	vols, err := db.ListVolumes(ctx)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if _, err := os.Stat(restoreStatePath(cfg.StateDir, v.UUID)); err == nil {
			continue // a live restore: resumed below, once the API can open its repository
		}
		if _, err := host.OpenVolume(v.UUID, v.Path); err != nil {
			log.Error("cannot open volume; not exported", "volume", v.UUID, "path", v.Path, "err", err)
			continue
		}
		log.Info("exporting volume", "volume", v.UUID, "path", v.Path, "size", v.Size)
	}

	metrics := NewMetrics(srv)
	jobs := &Jobs{DB: db, Log: log, Metrics: metrics}
	api := &API{DB: db, Jobs: jobs, Host: host, Log: log, Metrics: metrics, TargetEnv: env}
	api.exports = newBackupExports(api, srv, log)
	defer api.exports.closeAll()
	nl, err := nbd.Listen(cfg.NBDListen)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		nl.Close()
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	api.resumeRestores(ctx, vols)
	hs := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx, nl) }()
	go func() {
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	// Expired sessions and jobs older than 3 hours are purged hourly.
	go func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_, _ = db.PurgeExpiredSessions(ctx)
				_, _ = db.PurgeJobs(ctx, JobRetention)
			}
		}
	}()
	go api.exports.reap(ctx, 2*time.Minute)
	if cfg.GCInterval > 0 {
		go collectEvery(ctx, db, env, metrics, log, cfg.GCInterval)
	}
	log.Info("volback daemon serving", "api", "http://"+hl.Addr().String()+"/zstack/v1", "nbd", cfg.NBDListen, "state", cfg.StateDir)
	if cfg.Ready != nil {
		cfg.Ready(hl.Addr().String())
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
	jobs.Close()
	<-errc
	if err == nil {
		<-errc
	}
	if strings.HasPrefix(cfg.NBDListen, "unix://") {
		os.Remove(strings.TrimPrefix(cfg.NBDListen, "unix://"))
	}
	return err
}

// volumeSizeOf returns the size of a file or block device.
func volumeSizeOf(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// ensureDefaultStore gives a new daemon a local ImageStore backup storage
// under its state directory, so backups work with no set-up.
func ensureDefaultStore(ctx context.Context, db *inventory.DB, stateDir string, log *slog.Logger) error {
	ids, _, err := db.QueryUUIDs(ctx, "backup_storages", "", nil, "", 1, 0)
	if err != nil || len(ids) > 0 {
		return err
	}
	dir := filepath.Join(stateDir, "imagestore")
	s, err := local.Open(dir)
	if err != nil {
		return err
	}
	repo, err := chunkstore.Open(ctx, s)
	if errors.Is(err, chunkstore.ErrNoRepository) {
		repo, err = chunkstore.Init(ctx, s, chunkstore.InitOptions{})
	}
	if err != nil {
		s.Close()
		return fmt.Errorf("default image store %s: %w", dir, err)
	}
	repo.Close()
	bs := &inventory.BackupStorage{UUID: chunkstore.NewID(), Name: "local", Type: "ImageStoreBackupStorage", URL: dir}
	if err := db.AddBackupStorage(ctx, bs); err != nil {
		return err
	}
	log.Info("created the default local ImageStore backup storage", "uuid", bs.UUID, "url", dir)
	return nil
}
