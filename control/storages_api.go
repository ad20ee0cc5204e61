package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

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

// Connection statuses of a backup storage.
const (
	storageConnected    = "Connected"
	storageDisconnected = "Disconnected"
)

func toStorageInventory(b *inventory.BackupStorage) storageInventory {
	inv := storageInventory{UUID: b.UUID, Name: b.Name, URL: b.URL, Hostname: b.Hostname, Username: b.Username,
		Type: b.Type, State: string(inventory.StateEnabled), Status: storageConnected, CreateDate: gson(b.Created), LastOpDate: gson(b.LastOp)}
	var st unix.Statfs_t
	if unix.Statfs(b.URL, &st) == nil {
		inv.TotalCapacity = int64(st.Blocks) * st.Bsize
		inv.AvailableCapacity = int64(st.Bavail) * st.Bsize
	} else {
		inv.Status = storageDisconnected
	}
	return inv
}

// storage loads a backup storage: SYS.1003 if there is none.
func (a *API) storage(ctx context.Context, id string) (*inventory.BackupStorage, error) {
	bs, err := a.DB.GetBackupStorage(ctx, id)
	return bs, notFoundOr(err, "no backup storage %s", id)
}

// addImageStore is AddImageStoreBackupStorage (POST
// /backup-storage/image-store): the url is a local directory that becomes
// (or already is) a volback repository.
func (a *API) addImageStore(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p struct {
		Name         string `json:"name"`
		URL          string `json:"url"`
		Hostname     string `json:"hostname"`
		Username     string `json:"username"`
		Password     string `json:"password"`
		Description  string `json:"description"`
		ResourceUUID string `json:"resourceUuid"`
	}
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	if p.Name == "" || !filepath.IsAbs(p.URL) {
		return nil, errInvalid("name is required and url must be an absolute directory path")
	}
	if err := imageStoreDir(p.URL); err != nil {
		return nil, errInvalid("url %s: %v", p.URL, err)
	}
	id, err := resourceID(p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	// Tags on a storage become defaults for its backups: check them now.
	bt, err := ParseBackupTags(c.SystemTags())
	if err != nil {
		return nil, errTag(err)
	}
	if bt.Key != "" {
		if _, err := readKeyFile(a.KeyDir, bt.Key); err != nil {
			return nil, errTag(&TagError{Tag: keyPrefix + bt.Key, Reason: err.Error()})
		}
	}
	tags, _ := json.Marshal(nonNil(c.SystemTags()))
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		spec := target.Spec{Kind: target.Local, URL: p.URL, Key: bt.Key}
		repo, err := a.openRepo(ctx, spec, a.TargetEnv, target.RepoOptions{Create: target.CreateIfMissing})
		if err != nil {
			return nil, errFailed("cannot use the directory as a repository", err)
		}
		repo.Close()
		if problem := local.ModeProblem(p.URL); problem != "" {
			a.log().Warn(problem)
		}
		bs := &inventory.BackupStorage{UUID: id, Name: p.Name, Type: inventory.StorageImageStore, URL: p.URL,
			Hostname: p.Hostname, Username: p.Username, SystemTags: string(tags)}
		if err := a.DB.AddBackupStorage(ctx, bs); err != nil {
			return nil, errFailed("cannot record the backup storage", err)
		}
		return map[string]any{"inventory": toStorageInventory(bs)}, nil
	}, nil
}

// queryStorages is QueryBackupStorage (GET /backup-storage[/{uuid}]).
func (a *API) queryStorages(ctx context.Context, c *apiCall) (any, error) {
	return a.query(ctx, c, inventory.BackupStorages, loadEach(a.DB.GetBackupStorage,
		func(b *inventory.BackupStorage) any { return toStorageInventory(b) }))
}

// deleteBackupStorage is DeleteBackupStorage: the record goes, together
// with the inventory of its backups; the repository stays on disk, so it
// can be added again (or to another daemon) later.
func (a *API) deleteBackupStorage(ctx context.Context, c *apiCall) (JobFunc, error) {
	id := c.Path("uuid")
	if _, err := a.storage(ctx, id); err != nil {
		return nil, err
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		if err := a.DB.DeleteBackupStorageAndBackups(ctx, id); err != nil && !isNotFound(err) {
			return nil, errFailed("cannot delete the backup storage", err)
		}
		return map[string]any{}, nil
	}, nil
}

// imageStoreDir checks an ImageStore url before anything is written
// there: it must not exist yet, be an empty directory, or hold a volback
// repository, so that a url such as /, /etc or ~/.ssh is refused instead
// of written into.
func imageStoreDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return errors.New("not a directory")
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); err == nil {
		return nil // a repository, if opening it finds a volback config there (it writes nothing otherwise)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("a directory that is neither empty nor a volback repository (it holds %s, ...)", ents[0].Name())
	}
	return nil
}
