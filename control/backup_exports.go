package control

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/nbdexport"
	"github.com/volback/volback/nbd"
)

// backupExports serves every Ready backup read-only over NBD, under its
// uuid, opened when a client first names it and closed after it has had
// no client for a while: the daemon's side of `volback serve --backup`.
type backupExports struct {
	api  *API
	srv  *nbd.Server
	log  *slog.Logger
	mu   sync.Mutex
	open map[string]*openBackup
	// opening holds a channel per backup being opened, closed when done,
	// so the lock is not held while a target is reached.
	opening map[string]chan struct{}
}

type openBackup struct {
	e     *nbd.Export
	repo  *chunkstore.Repository
	im    *dataplane.Image
	since time.Time // without clients since; zero while it has some
}

func newBackupExports(api *API, srv *nbd.Server, log *slog.Logger) *backupExports {
	b := &backupExports{api: api, srv: srv, log: log, open: map[string]*openBackup{}, opening: map[string]chan struct{}{}}
	srv.Resolve = b.resolve
	return b
}

func (b *backupExports) resolve(name string) *nbd.Export {
	if chunkstore.ValidID(name) != nil {
		return nil
	}
	for {
		b.mu.Lock()
		if ob := b.open[name]; ob != nil {
			b.mu.Unlock()
			return ob.e
		}
		wait, busy := b.opening[name]
		if !busy {
			b.opening[name] = make(chan struct{})
			b.mu.Unlock()
			break
		}
		b.mu.Unlock()
		<-wait // another client is opening it; then look again
	}
	defer func() {
		b.mu.Lock()
		close(b.opening[name])
		delete(b.opening, name)
		b.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp, err := b.api.readyBackup(ctx, name, "")
	if err != nil {
		return nil
	}
	repo, m, err := b.api.openBackup(ctx, cp)
	if err != nil {
		b.log.Warn("cannot export backup", "backup", name, "err", err)
		return nil
	}
	im := dataplane.OpenImage(repo, m, dataplane.ImageOptions{CacheChunks: 16})
	e := backupExport(name, m, im)
	b.mu.Lock()
	b.open[name] = &openBackup{e: e, repo: repo, im: im}
	b.mu.Unlock()
	b.log.Info("exporting backup read-only", "backup", name, "volume", m.VolumeID, "target", repo.Location())
	return e
}

// reap closes backup exports that have had no client for idle.
func (b *backupExports) reap(ctx context.Context, idle time.Duration) {
	every(ctx, idle/4, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for id, ob := range b.open {
			if b.srv.ConnectionsTo(id) > 0 {
				ob.since = time.Time{}
				continue
			}
			if ob.since.IsZero() {
				ob.since = time.Now()
			} else if time.Since(ob.since) > idle {
				b.closeLocked(id)
			}
		}
	})
}

// drop unpublishes a backup (deleted); clients still attached get errors.
func (b *backupExports) drop(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open[id] != nil {
		b.closeLocked(id)
	}
}

func (b *backupExports) closeLocked(id string) {
	ob := b.open[id]
	b.srv.RemoveExport(id)
	ob.im.Close()
	ob.repo.Close()
	delete(b.open, id)
}

func (b *backupExports) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id := range b.open {
		b.closeLocked(id)
	}
}

// backupExport is the read-only NBD export of a backup image.
func backupExport(id string, m *chunkstore.Manifest, im *dataplane.Image) *nbd.Export {
	return &nbd.Export{Name: id, Description: "volback backup " + id + " of volume " + m.VolumeID, ReadOnly: true,
		Backend: nbdexport.Image{Image: im}}
}
