package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

const (
	inventoryName = "inventory.db"
	// copiesDir holds consistent copies of the inventory, newest last by
	// name; keepCopies of them are kept.
	copiesDir  = "inventory-copies"
	keepCopies = 3
)

// checkInventory refuses to start on a state directory that holds
// volumes, changed-block state or a repository while its inventory is
// missing or empty: starting would silently begin an empty inventory (a
// new default storage uuid, volumes no longer exported) over live state.
func checkInventory(stateDir string) error {
	path := filepath.Join(stateDir, inventoryName)
	fi, err := os.Stat(path)
	state := "missing"
	switch {
	case err == nil && fi.Size() > 0:
		return nil
	case err == nil:
		state = "empty"
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("inventory %s: %w", path, err)
	}
	var held []string
	if n := countFiles(filepath.Join(stateDir, "volumes"), ".raw"); n > 0 {
		held = append(held, fmt.Sprintf("%d volumes", n))
	}
	if n := countFiles(filepath.Join(stateDir, "cbt"), ".cbt"); n > 0 {
		held = append(held, fmt.Sprintf("changed-block state of %d volumes", n))
	}
	if _, err := os.Stat(filepath.Join(stateDir, "imagestore", "config")); err == nil {
		held = append(held, "a repository (imagestore)")
	}
	if n := countFiles(filepath.Join(stateDir, copiesDir), ".db"); n > 0 {
		held = append(held, fmt.Sprintf("%d inventory copies", n))
	}
	if len(held) == 0 {
		return nil // a new state directory
	}
	return fmt.Errorf("inventory %s is %s but the state directory holds %s: refusing to start with an empty inventory; "+
		"run `volback daemon --state-dir %s --rebuild-inventory` to rebuild it from its copies, the state directory and the repositories",
		path, state, strings.Join(held, ", "), stateDir)
}

func countFiles(dir, suffix string) int {
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), suffix) && !strings.HasPrefix(e.Name(), ".") {
			n++
		}
	}
	return n
}

// copyInventory writes a consistent copy of the inventory into the state
// directory's copies and keeps the newest keepCopies.
func copyInventory(ctx context.Context, db *inventory.DB, stateDir string) error {
	dir := filepath.Join(stateDir, copiesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	name := "inventory-" + time.Now().UTC().Format("20060102T150405.000000000") + ".db"
	if err := db.CopyTo(ctx, filepath.Join(dir, name)); err != nil {
		return err
	}
	copies := inventoryCopies(stateDir)
	for len(copies) > keepCopies {
		_ = os.Remove(copies[0])
		copies = copies[1:]
	}
	return nil
}

// inventoryCopies lists the copies, oldest first.
func inventoryCopies(stateDir string) []string {
	paths, _ := filepath.Glob(filepath.Join(stateDir, copiesDir, "inventory-*.db"))
	sort.Strings(paths)
	return paths
}

// RebuildInventory rebuilds a state directory's inventory: from its newest
// copy that passes SQLite's integrity check if there is one, else from
// nothing; then the volumes the state directory holds and the backups in
// every storage's repositories (manifests describe themselves) are
// recorded if missing. A damaged inventory is kept aside, never deleted.
// It returns what it did and what it could not recover, a line each.
func RebuildInventory(ctx context.Context, stateDir string, env target.Env, log *slog.Logger) ([]string, error) {
	var report []string
	say := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		report = append(report, line)
		log.Warn("rebuild inventory: " + line)
	}
	path := filepath.Join(stateDir, inventoryName)
	stamp := time.Now().UTC().Format("20060102T150405")
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if fi, err := os.Stat(path + suffix); err == nil {
			if suffix == "" || fi.Size() > 0 {
				aside := path + suffix + ".broken-" + stamp
				if err := os.Rename(path+suffix, aside); err != nil {
					return report, fmt.Errorf("keep the damaged inventory aside: %w", err)
				}
				if suffix == "" {
					say("the previous inventory is kept as %s", aside)
				}
			} else {
				_ = os.Remove(path + suffix)
			}
		}
	}

	var db *inventory.DB
	copies := inventoryCopies(stateDir)
	for i := len(copies) - 1; i >= 0 && db == nil; i-- {
		if err := copyFile(copies[i], path); err != nil {
			say("copy %s cannot be used: %v", copies[i], err)
			continue
		}
		d, err := inventory.Open(ctx, path, nil)
		if err == nil {
			if err = d.Check(ctx); err != nil {
				d.Close()
			}
		}
		if err != nil {
			_ = os.Remove(path)
			say("copy %s cannot be used: %v", copies[i], err)
			continue
		}
		db = d
		say("restored from the copy %s; what changed after it is taken from the state directory and the repositories", copies[i])
	}
	if db == nil {
		var err error
		if db, err = inventory.Open(ctx, path, nil); err != nil {
			return report, err
		}
		say("no usable copy: rebuilt from the state directory and the repositories; volume names, user tags, sessions, jobs, " +
			"backup storages other than the default and their system tags are not recovered (add the storages again, then SyncVolumeBackup)")
	}
	defer db.Close()
	if err := ensureDefaultStore(ctx, db, stateDir, log); err != nil {
		return report, err
	}

	// Volumes the daemon created live under volumes/.
	ents, _ := os.ReadDir(filepath.Join(stateDir, "volumes"))
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".raw")
		if !ok || e.IsDir() || ValidVolumeID(id) != nil {
			continue
		}
		if _, err := db.GetVolume(ctx, id); err == nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			say("volume %s: %v", id, err)
			continue
		}
		v := &inventory.Volume{UUID: id, Name: "rebuilt-" + id[:8], Path: filepath.Join(stateDir, "volumes", e.Name()), Size: fi.Size(),
			Type: inventory.VolumeData, State: inventory.StateEnabled, Status: inventory.StatusReady}
		if err := db.AddVolume(ctx, v); err != nil {
			return report, err
		}
		say("volume %s recorded again (%d bytes, named %s; attach it to its VM again if it had one)", id, v.Size, v.Name)
	}

	// Backups, from every repository a storage names.
	a := &API{DB: db, Log: log, TargetEnv: env, KeyDir: filepath.Join(stateDir, "keys")}
	storages, err := db.ListBackupStorages(ctx)
	if err != nil {
		return report, err
	}
	for _, bs := range storages {
		for _, spec := range storageTargets(ctx, db, bs) {
			octx, cancel := context.WithTimeout(ctx, recoverTimeout)
			repo, err := a.openRepo(octx, spec, env, target.RepoOptions{})
			cancel()
			if err != nil {
				say("backups in %s (storage %s) not recovered: %v; run SyncVolumeBackup once it is reachable", spec.String(), bs.UUID, err)
				continue
			}
			_, added, copies, bad, err := a.importBackups(ctx, bs, spec, repo, &dataplane.Progress{})
			repo.Close()
			if err != nil {
				say("backups in %s (storage %s) not recovered: %v", spec.String(), bs.UUID, err)
				continue
			}
			say("%s (storage %s): %d backups recorded, %d copies recorded", spec.String(), bs.UUID, len(added), copies)
			for _, b := range bad {
				say("backup %s in %s not recovered: %s", b.ID, spec.String(), b.Error)
			}
		}
	}
	return report, copyInventory(ctx, db, stateDir)
}

// copyFile copies src to dst durably, through a temporary file.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// privateInventory makes the inventory and its WAL and shared-memory files
// 0600 (SQLite gives the latter the database's mode): created so when
// missing, tightened, with a log line, when looser.
func privateInventory(stateDir string, log *slog.Logger) error {
	path := filepath.Join(stateDir, inventoryName)
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("inventory %s: %w", path, err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o077 == 0 {
			continue
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return fmt.Errorf("inventory %s: %w", p, err)
		}
		log.Warn("inventory file was readable by other local users; tightened to 0600", "file", p, "was", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return nil
}
