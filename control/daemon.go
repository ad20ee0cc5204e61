package control

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

// DaemonConfig configures RunDaemon.
type DaemonConfig struct {
	StateDir string // default "volback-data"
	// Listen is the ZStack API's address, default 127.0.0.1:8080.
	Listen string
	// NoAPI runs the daemon without the ZStack API (volback serve):
	// volumes over NBD and the admin socket only.
	NoAPI     bool
	NBDListen string // default unix://<StateDir>/nbd.sock
	// AdminSocket is the Unix socket of the local admin API (live
	// backups for `volback backup --live`); default
	// <StateDir>/control.sock.
	AdminSocket string
	// Volumes are existing images or devices to register and export
	// (see ParseVolumeFlags).
	Volumes map[string]VolumeSpec
	// Repo and Backups: backups of Repo to export read-only, each under
	// its id, for as long as the daemon runs (volback serve --backup).
	Repo    *chunkstore.Repository
	Backups []string
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
	// RebuildInventory rebuilds the inventory before starting (see
	// RebuildInventory); without it, a state directory with volumes,
	// changed-block state or a repository but an empty inventory is
	// refused.
	RebuildInventory bool
	// InventoryCopyInterval is how often a consistent copy of the
	// inventory is written to <StateDir>/inventory-copies (also at start
	// and at a clean stop); default one hour.
	InventoryCopyInterval time.Duration
	// VerifyInterval is how often every backup is re-verified (0 =
	// never; VerifyVolumeBackup still verifies one).
	VerifyInterval time.Duration
	// Ready, if set, is called with the API's address ("" without the
	// API) once everything listens.
	Ready func(apiAddr string)
	// TLSCert and TLSKey (PEM files) serve the API over HTTPS, TLS 1.3
	// only. Without them the API listens on loopback only, unless
	// Insecure.
	TLSCert, TLSKey string
	// NBDTLSCert and NBDTLSKey serve NBD over TCP with STARTTLS (TLS
	// required there); NBDTLSCA, if set, also requires client
	// certificates it signed. Default: the API's certificate. Without
	// any, NBD over TCP is refused unless Insecure.
	NBDTLSCert, NBDTLSKey, NBDTLSCA string
	// Insecure allows the API off loopback without TLS and NBD over TCP
	// without TLS: for a network where nothing else can listen.
	Insecure bool
	// APIURL is the API's base URL as clients reach it (job locations
	// are built from it), e.g. https://backup1.example.com:8080; default
	// the address each connection arrived at.
	APIURL string
}

// defaultPassword is ZStack's, and the admin account's unless configured.
const defaultPassword = "password"

// loopbackOnly reports whether a host:port listens on loopback only.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// serverTLS loads a certificate for a TLS 1.3 server; with caFile, client
// certificates signed by it are required.
func serverTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS client CA %s: no PEM certificate in it", caFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// securityChecks refuses the configurations that expose the daemon: the
// API off loopback without TLS or with the default password, NBD over
// TCP without TLS. It returns the TLS configurations to serve with.
func securityChecks(cfg *DaemonConfig, log *slog.Logger) (api, nbdTLS *tls.Config, err error) {
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, nil, errors.New("--tls-cert and --tls-key go together")
	}
	if cfg.TLSCert != "" {
		if api, err = serverTLS(cfg.TLSCert, cfg.TLSKey, ""); err != nil {
			return nil, nil, err
		}
	}
	if !cfg.NoAPI && !loopbackOnly(cfg.Listen) {
		if api == nil && !cfg.Insecure {
			return nil, nil, fmt.Errorf("refusing to serve the API on %s without TLS: give --tls-cert and --tls-key (or --insecure on a network nothing else can reach)", cfg.Listen)
		}
		if cfg.AdminPassword == defaultPassword {
			return nil, nil, fmt.Errorf("refusing to serve the API on %s with the default admin password: set --admin-password or VOLBACK_ADMIN_PASSWORD", cfg.Listen)
		}
	}
	if !cfg.NoAPI && cfg.AdminPassword == defaultPassword {
		log.Warn("the admin account has the default password; set --admin-password (or VOLBACK_ADMIN_PASSWORD) before serving beyond this host")
	}
	if strings.HasPrefix(cfg.NBDListen, "tcp://") {
		certFile, keyFile := cfg.NBDTLSCert, cfg.NBDTLSKey
		if certFile == "" && keyFile == "" {
			certFile, keyFile = cfg.TLSCert, cfg.TLSKey
		}
		switch {
		case certFile != "":
			if nbdTLS, err = serverTLS(certFile, keyFile, cfg.NBDTLSCA); err != nil {
				return nil, nil, fmt.Errorf("NBD: %w", err)
			}
		case !cfg.Insecure:
			return nil, nil, fmt.Errorf("refusing to serve NBD on %s without TLS: give --nbd-tls-cert and --nbd-tls-key (or --tls-cert/--tls-key), or --insecure", cfg.NBDListen)
		default:
			log.Warn("NBD over TCP without TLS: any host that reaches the port reads and writes the volumes", "nbd", cfg.NBDListen)
		}
	}
	return api, nbdTLS, nil
}

// adminAccountUUID is the admin account's fixed uuid.
const adminAccountUUID = "36c27e8ff05c4780bf6d2fa65700f22e"

// RunDaemon runs the daemon until ctx is done: every known volume exported
// over NBD, the admin socket, and unless NoAPI the ZStack-compatible API
// with its jobs; state under StateDir. On the way out the API stops taking
// requests, running jobs and live backups are cancelled (and recorded
// failed), NBD connections finish, and every volume's changed-block maps
// are saved.
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
		cfg.AdminPassword = defaultPassword
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	// The state directory holds the inventory (sessions, the credential)
	// and the volumes: private whatever it was created with.
	if fi, err := os.Stat(cfg.StateDir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
			return fmt.Errorf("state directory %s: %w", cfg.StateDir, err)
		}
		log.Warn("state directory was readable by other local users; tightened to 0700", "dir", cfg.StateDir, "was", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	// Paths recorded in the inventory must not depend on the working
	// directory of the next start.
	if cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return err
	}
	if cfg.NBDListen == "" {
		cfg.NBDListen = "unix://" + filepath.Join(cfg.StateDir, "nbd.sock")
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.StateDir, "control.sock")
	}
	apiTLS, nbdTLS, err := securityChecks(&cfg, log)
	if err != nil {
		return err
	}
	env := target.Env{S3AccessKeyID: cfg.S3AccessKeyID, S3SecretAccessKey: cfg.S3SecretAccessKey}
	keyDir := filepath.Join(cfg.StateDir, "keys")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	if err := os.Chmod(keyDir, 0o700); err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	if cfg.RebuildInventory {
		if _, err := RebuildInventory(ctx, cfg.StateDir, env, log); err != nil {
			return fmt.Errorf("rebuild inventory: %w", err)
		}
	} else if err := checkInventory(cfg.StateDir); err != nil {
		return err
	}
	if err := privateInventory(cfg.StateDir, log); err != nil {
		return err
	}
	db, err := inventory.Open(ctx, filepath.Join(cfg.StateDir, inventoryName), nil)
	if err != nil {
		return fmt.Errorf("%w (if the file is damaged, start with --rebuild-inventory)", err)
	}
	defer db.Close()
	if cfg.InventoryCopyInterval <= 0 {
		cfg.InventoryCopyInterval = time.Hour
	}
	if err := db.EnsureAccount(ctx, adminAccountUUID, "admin", inventory.HashPassword(cfg.AdminPassword)); err != nil {
		return err
	}
	// Backups first: a job whose backups finished before the stop
	// succeeds; the others are recorded failed.
	if ready, dropped, err := (&API{DB: db, Log: log, TargetEnv: env, KeyDir: keyDir}).RecoverBackups(ctx); err != nil {
		return err
	} else if ready+dropped > 0 {
		log.Warn("backups left unfinished by the last stop are settled", "ready", ready, "dropped", dropped)
	}
	failed, _ := json.Marshal(map[string]*ErrorCode{"error": errRefused("operation failed", "the daemon stopped while this job was running")})
	if n, err := db.FailRunningJobs(ctx, failed); err != nil {
		return err
	} else if n > 0 {
		log.Warn("jobs interrupted by the last stop are recorded failed", "jobs", n)
	}
	if !cfg.NoAPI {
		if err := ensureDefaultStore(ctx, db, cfg.StateDir, log); err != nil {
			return err
		}
	}
	if storages, err := db.ListBackupStorages(ctx); err == nil {
		for _, bs := range storages {
			if problem := local.ModeProblem(bs.URL); problem != "" {
				log.Warn(problem, "storage", bs.UUID)
			}
		}
	}

	srv := nbd.NewServer()
	srv.TLSConfig = nbdTLS
	srv.Logger = log
	host := &Host{StateDir: cfg.StateDir, NBD: srv}
	defer func() {
		if cerr := host.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := registerVolumes(ctx, db, cfg.Volumes); err != nil {
		return err
	}
	vols, err := db.ListVolumes(ctx)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if _, err := os.Stat(host.restoreStatePath(v.UUID)); err == nil {
			continue // a live restore: resumed below, once its repository can be opened
		}
		if isQEMUPath(v.Path) {
			log.Info("QEMU volume: backed up through QMP, served by QEMU", "volume", v.UUID, "disk", v.Path, "size", v.Size)
			continue
		}
		if _, err := host.OpenVolume(v.UUID, v.Path); err != nil {
			log.Error("cannot open volume; not exported", "volume", v.UUID, "path", v.Path, "err", err)
			continue
		}
		log.Info("exporting volume", "volume", v.UUID, "path", v.Path, "size", v.Size)
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
		srv.AddExport(backupExport(id, m, im))
		log.Info("exporting backup read-only", "backup", id, "volume", m.VolumeID, "size", m.Size, "repo", cfg.Repo.Location())
	}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	metrics := NewMetrics(srv)
	jobs := &Jobs{DB: db, Log: log, Metrics: metrics}
	api := &API{DB: db, Jobs: jobs, Host: host, Log: log, Metrics: metrics, TargetEnv: env, KeyDir: keyDir, BaseURL: strings.TrimSuffix(cfg.APIURL, "/")}
	admin := &LocalAPI{api: api, ctx: ctx}

	// Listen on everything before serving anything, so a port in use
	// fails the start cleanly.
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	nl, err := nbd.Listen(cfg.NBDListen)
	if err != nil {
		return err
	}
	listeners = append(listeners, nl)
	al, err := nbd.Listen("unix://" + cfg.AdminSocket)
	if err != nil {
		closeAll()
		return fmt.Errorf("admin socket: %w", err)
	}
	listeners = append(listeners, al)
	var hl net.Listener
	if !cfg.NoAPI {
		if hl, err = net.Listen("tcp", cfg.Listen); err != nil {
			closeAll()
			return fmt.Errorf("listen %s: %w", cfg.Listen, err)
		}
		if apiTLS != nil {
			hl = tls.NewListener(hl, apiTLS)
		}
		listeners = append(listeners, hl)
		api.exports = newBackupExports(api, srv, log)
		defer api.exports.closeAll()
	}
	// Live restores a stop interrupted go on, with or without the API.
	api.resumeRestores(ctx, vols)

	servers := []*http.Server{{Handler: admin.Handler(), ReadHeaderTimeout: 10 * time.Second}}
	if hl != nil {
		servers = append(servers, &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second})
	}
	errc := make(chan error, 1+len(servers))
	go func() { errc <- srv.Serve(ctx, nl) }()
	serveHTTP := func(hs *http.Server, l net.Listener) {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}
	go serveHTTP(servers[0], al)
	apiAddr := ""
	if hl != nil {
		go serveHTTP(servers[1], hl)
		apiAddr = hl.Addr().String()
		go purgeEvery(ctx, db, time.Hour)
		go api.exports.reap(ctx, 2*time.Minute)
		if cfg.GCInterval > 0 {
			go api.collectEvery(ctx, cfg.GCInterval)
		}
		if cfg.VerifyInterval > 0 {
			go api.verifyEvery(ctx, cfg.VerifyInterval)
		}
		scheme := "http"
		if apiTLS != nil {
			scheme = "https"
		}
		log.Info("volback daemon serving", "api", scheme+"://"+apiAddr+"/zstack/v1", "nbd", cfg.NBDListen, "admin", "unix://"+cfg.AdminSocket, "state", cfg.StateDir)
	} else {
		log.Info("serving", "nbd", cfg.NBDListen, "admin", "unix://"+cfg.AdminSocket, "state", cfg.StateDir)
	}
	// A consistent copy of the inventory now, on a schedule and at a
	// clean stop: what --rebuild-inventory starts from.
	saveInventory := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := copyInventory(cctx, db, cfg.StateDir); err != nil {
			log.Error("cannot copy the inventory", "err", err)
		}
	}
	saveInventory()
	go every(ctx, cfg.InventoryCopyInterval, saveInventory)
	if cfg.Ready != nil {
		cfg.Ready(apiAddr)
	}

	var serveErr error
	pending := 1 + len(servers) // goroutines that will send on errc
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		pending--
	}
	log.Info("shutting down")
	// The shutdown sequence: stop taking requests, cancel jobs and live
	// backups (each records how it ended), let NBD connections finish;
	// the volumes close (saving their maps) when this function returns.
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, hs := range servers {
		_ = hs.Shutdown(sctx)
	}
	jobs.Close()
	admin.wait()
	for ; pending > 0; pending-- {
		if e := <-errc; e != nil && serveErr == nil {
			serveErr = e
		}
	}
	saveInventory()
	os.Remove(cfg.AdminSocket)
	if strings.HasPrefix(cfg.NBDListen, "unix://") {
		os.Remove(strings.TrimPrefix(cfg.NBDListen, "unix://"))
	}
	return serveErr
}

// registerVolumes records the volumes given on the command line, with
// their type and VM if given. A volume recorded with another path is
// refused: its changed-block maps describe the other file.
func registerVolumes(ctx context.Context, db *inventory.DB, vols map[string]VolumeSpec) error {
	ids := make([]string, 0, len(vols))
	for id := range vols {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := ValidVolumeID(id); err != nil {
			return fmt.Errorf("--volume %s: %w", id, err)
		}
		spec := vols[id]
		if isQEMUPath(spec.Path) {
			if err := registerQEMUVolume(ctx, db, id, spec); err != nil {
				return err
			}
			continue
		}
		path, err := filepath.Abs(spec.Path)
		if err != nil {
			return err
		}
		rec, err := db.GetVolume(ctx, id)
		switch {
		case err == nil && rec.Path != path:
			return fmt.Errorf("--volume %s=%s: volume %s is recorded with path %s; delete it first to register another file", id, path, id, rec.Path)
		case err == nil:
			if (spec.Type != "" && spec.Type != rec.Type) || (spec.VM != "" && spec.VM != rec.VMInstanceUUID) {
				if err := db.SetVolumeVM(ctx, id, cmp.Or(spec.VM, rec.VMInstanceUUID), cmp.Or(spec.Type, rec.Type)); err != nil {
					return err
				}
			}
			continue
		case !errors.Is(err, inventory.ErrNotFound):
			return err
		}
		f, size, err := dataplane.OpenVolume(path)
		if err != nil {
			return fmt.Errorf("--volume %s: %w", id, err)
		}
		f.Close()
		if err := db.AddVolume(ctx, &inventory.Volume{UUID: id, Name: filepath.Base(path), Path: path, Size: size,
			Type: cmp.Or(spec.Type, inventory.VolumeRoot), VMInstanceUUID: spec.VM, State: inventory.StateEnabled, Status: inventory.StatusReady}); err != nil {
			return err
		}
	}
	return nil
}

// purgeEvery deletes expired sessions and jobs older than JobRetention.
func purgeEvery(ctx context.Context, db *inventory.DB, interval time.Duration) {
	every(ctx, interval, func() {
		_, _ = db.PurgeExpiredSessions(ctx)
		_, _ = db.PurgeJobs(ctx, JobRetention)
	})
}

// every runs fn each interval until ctx is done.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// ensureDefaultStore gives a new daemon a local ImageStore backup storage
// under its state directory, so backups work with no set-up.
func ensureDefaultStore(ctx context.Context, db *inventory.DB, stateDir string, log *slog.Logger) error {
	if n, err := db.CountBackupStorages(ctx); err != nil || n > 0 {
		return err
	}
	dir := filepath.Join(stateDir, "imagestore")
	repo, err := target.OpenRepository(ctx, target.Spec{Kind: target.Local, URL: dir}, target.Env{}, target.RepoOptions{Create: target.CreateIfMissing})
	if err != nil {
		return fmt.Errorf("default image store %s: %w", dir, err)
	}
	repo.Close()
	bs := &inventory.BackupStorage{UUID: chunkstore.NewID(), Name: "local", Type: inventory.StorageImageStore, URL: dir}
	if err := db.AddBackupStorage(ctx, bs); err != nil {
		return err
	}
	log.Info("created the default local ImageStore backup storage", "uuid", bs.UUID, "url", dir)
	return nil
}
