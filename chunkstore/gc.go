package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Markers: the objects through which backups and garbage collections,
// possibly on different hosts, keep out of each other's way.
//
//	locks/backup-<id>   a backup in progress
//	locks/gc-<id>       a garbage collection in progress
//
// Both sides write their own marker first and look for the other kind
// second, so whichever comes second sees the first (the store is strongly
// consistent for a writer's own puts once Sync returns). A collection that
// finds a live backup marker withdraws; a backup that finds a live GC
// marker waits for it to go. Markers carry a heartbeat refreshed every
// HeartbeatInterval; one not refreshed for StaleAfter belongs to a process
// that died and is ignored (and removed by the next collection).
const (
	lockPrefix       = "locks/"
	backupLockPrefix = lockPrefix + "backup-"
	gcLockPrefix     = lockPrefix + "gc-"
)

// Heartbeat timing of markers. Variables so tests can shorten them.
var (
	HeartbeatInterval = time.Minute
	StaleAfter        = 15 * time.Minute
	gcPollInterval    = time.Second
)

// ErrBackupsInProgress is returned (wrapped) by GC when backups into the
// repository are running: their chunks are not yet named by any manifest.
var ErrBackupsInProgress = errors.New("backups are in progress in this repository")

type marker struct {
	Kind      string    `json:"kind"` // "backup" or "gc"
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
	// Where the PID means something: this boot of this kernel (its
	// random boot id) and PID namespace. Empty in older markers.
	Boot  string `json:"boot,omitempty"`
	PIDNS string `json:"pidns,omitempty"`
}

// stale says whether m's writer is gone: its heartbeat is older than
// StaleAfter, or it ran in this very boot and PID namespace and its
// process no longer exists (a daemon killed here need not hold up
// backups or collections for StaleAfter).
func (m marker) stale(now time.Time) bool {
	if now.Sub(m.Heartbeat) > StaleAfter {
		return true
	}
	return m.Boot != "" && m.Boot == thisProcess.boot && m.PIDNS == thisProcess.pidns && m.PID > 0 && !processAlive(m.PID)
}

// thisProcess is where this process runs, for markers.
var thisProcess = func() (p struct{ boot, pidns string }) {
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		p.boot = strings.TrimSpace(string(b))
	}
	if ns, err := os.Readlink("/proc/self/ns/pid"); err == nil {
		p.pidns = ns
	}
	return p
}()

// processAlive says whether a process of this PID namespace exists (a
// reused PID counts as alive: the marker then waits for StaleAfter).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Lease is a marker held by a backup or a collection, refreshed in the
// background until Release.
type Lease struct {
	repo    *Repository
	name    string
	m       marker
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	lastErr error
}

func (r *Repository) putMarker(ctx context.Context, name string, m marker) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := r.store.Put(ctx, name, b); err != nil {
		return fmt.Errorf("%s: write marker %s: %w", r.store.Location(), name, err)
	}
	// Other processes see a put only once it is synced (the local driver
	// renames at Sync).
	if err := r.store.Sync(ctx); err != nil {
		return fmt.Errorf("%s: sync marker %s: %w", r.store.Location(), name, err)
	}
	return nil
}

func (r *Repository) acquire(ctx context.Context, kind, id string) (*Lease, error) {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	l := &Lease{
		repo: r,
		name: lockPrefix + kind + "-" + id,
		m: marker{Kind: kind, ID: id, Host: host, PID: os.Getpid(), Started: now, Heartbeat: now,
			Boot: thisProcess.boot, PIDNS: thisProcess.pidns},
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if err := r.putMarker(ctx, l.name, l.m); err != nil {
		return nil, err
	}
	go l.beat()
	return l, nil
}

func (l *Lease) beat() {
	defer close(l.done)
	t := time.NewTicker(HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.m.Heartbeat = time.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), HeartbeatInterval)
			err := l.repo.putMarker(ctx, l.name, l.m)
			cancel()
			l.mu.Lock()
			l.lastErr = err
			l.mu.Unlock()
		}
	}
}

// Err returns the last heartbeat's error, if it failed: a holder that
// cannot refresh its marker may be taken for dead by other hosts.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// ReleaseAfter releases the lease at the end of work done under ctx: with
// a context of its own (30 s), so a cancelled or failed backup still
// removes its marker, and with the error dropped (a marker left behind goes
// stale and is ignored). Holders defer it.
func (l *Lease) ReleaseAfter(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = l.Release(rctx)
}

// Release stops the heartbeat and removes the marker. It is safe to call
// more than once.
func (l *Lease) Release(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		if e := l.repo.store.Delete(ctx, l.name); e != nil && !errors.Is(e, ErrNotFound) {
			err = fmt.Errorf("%s: remove marker %s: %w", l.repo.store.Location(), l.name, e)
		}
	})
	return err
}

// liveMarkers returns the markers under prefix whose heartbeat is fresh,
// and the names of stale ones.
func (r *Repository) liveMarkers(ctx context.Context, prefix string) (live []marker, stale []string, err error) {
	var names []string
	err = r.store.List(ctx, prefix, func(info Info) error {
		names = append(names, info.Name)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: list markers: %w", r.store.Location(), err)
	}
	now := time.Now()
	for _, n := range names {
		b, err := r.store.Get(ctx, n)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: read marker %s: %w", r.store.Location(), n, err)
		}
		var m marker
		if json.Unmarshal(b, &m) != nil || m.stale(now) {
			stale = append(stale, n)
			continue
		}
		live = append(live, m)
	}
	return live, stale, nil
}

// BeginBackup announces backup id to collections in any process or host
// and waits while one is running. Until the lease is released, no
// collection deletes anything, so every chunk the backup finds stored (and
// every chunk of a parent manifest that still exists) stays.
func (r *Repository) BeginBackup(ctx context.Context, id string) (*Lease, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	l, err := r.acquire(ctx, "backup", id)
	if err != nil {
		return nil, err
	}
	for {
		live, _, err := r.liveMarkers(ctx, gcLockPrefix)
		if err == nil && len(live) == 0 {
			return l, nil
		}
		if err == nil {
			select {
			case <-ctx.Done():
				err = fmt.Errorf("waiting for garbage collection %s on %s to finish: %w", live[0].ID, live[0].Host, ctx.Err())
			case <-time.After(gcPollInterval):
				continue
			}
		}
		l.ReleaseAfter(ctx)
		return nil, err
	}
}

// GCOptions configures a garbage collection.
type GCOptions struct {
	// DryRun counts what would be deleted and deletes nothing.
	DryRun bool
	// Progress, if set, is called with chunks examined so far.
	Progress func(examined int)
	// TempGrace is how old a temporary object a dead writer left behind
	// must be before it is removed (stores that are StaleRemovers);
	// 0 means DefaultTempGrace. It must exceed the longest write.
	TempGrace time.Duration
	// TempDir holds the mark's sorted runs when the keys in use outgrow
	// MarkKeys ("" = the system's temporary directory).
	TempDir string
	// MarkKeys bounds the keys the mark holds in memory (16 bytes each)
	// before it writes a run; 0 means 1Mi keys, 16 MiB.
	MarkKeys int
}

// DefaultTempGrace is GCOptions.TempGrace's default.
const DefaultTempGrace = 24 * time.Hour

// GCReport says what a collection found and did.
type GCReport struct {
	Manifests      int           `json:"manifests"`
	ChunksTotal    int           `json:"chunksTotal"`
	ChunksInUse    int           `json:"chunksInUse"`
	ChunksDeleted  int           `json:"chunksDeleted"`
	BytesDeleted   int64         `json:"bytesDeleted"`
	StaleMarkers   int           `json:"staleMarkers"`
	TempsRemoved   int           `json:"tempsRemoved"`  // temporary objects of dead writers
	MissingChunks  int           `json:"missingChunks"` // named by a manifest, not stored
	Duration       time.Duration `json:"durationNanos"`
	DryRun         bool          `json:"dryRun"`
	BackupsRunning []string      `json:"backupsRunning,omitempty"`
	BadManifests   []BadManifest `json:"badManifests,omitempty"`
	// ReserveUsed says the repository was full: the collection took the
	// room the reserve kept. ReserveError says why the reserve could not
	// be put back (the next collection of a full repository would fail).
	ReserveUsed  bool   `json:"reserveUsed,omitempty"`
	ReserveError string `json:"reserveError,omitempty"`
	// IndexWritten says the collection wrote a backup index (listings
	// then read it instead of every manifest).
	IndexWritten bool `json:"indexWritten,omitempty"`
	// MarkRuns is how many sorted runs of keys the mark wrote to its
	// temporary directory (0: the keys in use fit in its buffer).
	MarkRuns int `json:"markRuns,omitempty"`
}

// maxIndexedByGC bounds the summaries a collection keeps for the index it
// writes (about 0.5 KiB each): beyond, the mark phase stays within its
// memory bound and listings write the index themselves.
const maxIndexedByGC = 200_000

// Add sums o into r: the report of collecting several repositories.
func (r *GCReport) Add(o *GCReport) {
	r.Manifests += o.Manifests
	r.ChunksTotal += o.ChunksTotal
	r.ChunksInUse += o.ChunksInUse
	r.ChunksDeleted += o.ChunksDeleted
	r.BytesDeleted += o.BytesDeleted
	r.StaleMarkers += o.StaleMarkers
	r.TempsRemoved += o.TempsRemoved
	r.MissingChunks += o.MissingChunks
	r.Duration += o.Duration
	r.BackupsRunning = append(r.BackupsRunning, o.BackupsRunning...)
	r.BadManifests = append(r.BadManifests, o.BadManifests...)
	r.ReserveUsed = r.ReserveUsed || o.ReserveUsed
	if o.ReserveError != "" {
		r.ReserveError = strings.TrimPrefix(r.ReserveError+"; "+o.ReserveError, "; ")
	}
}

// reserveName is an object that keeps room for garbage collection, which
// only frees space but writes its marker first: on a full repository the
// collection deletes it to make that room, and puts it back when done.
const reserveName = "reserve"

// ReserveSize is the reserve's size: room for the collection's marker and
// its heartbeats, on any file system's block size.
const ReserveSize = 1 << 20

func putReserve(ctx context.Context, store Store) error {
	if err := store.Put(ctx, reserveName, make([]byte, ReserveSize)); err != nil {
		return fmt.Errorf("%s: keep room for garbage collection: %w", store.Location(), err)
	}
	if err := store.Sync(ctx); err != nil {
		return fmt.Errorf("%s: keep room for garbage collection: %w", store.Location(), err)
	}
	return nil
}

// keepReserve puts the reserve back if it is missing (used, or a
// repository made before it existed).
func (r *Repository) keepReserve(ctx context.Context) error {
	if info, err := r.store.Stat(ctx, reserveName); err == nil && info.Size == ReserveSize {
		return nil
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return putReserve(ctx, r.store)
}

// GC deletes every chunk no manifest names. It refuses, with
// ErrBackupsInProgress, while any backup holds a live marker (their new
// chunks are named by no manifest yet, and a chunk they found stored is
// about to be named); backups that start meanwhile wait for it.
func (r *Repository) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	started := time.Now()
	rep := &GCReport{DryRun: opts.DryRun}
	id := NewID()
	l, err := r.acquire(ctx, "gc", id)
	if err != nil {
		// A full repository has no room for the marker: the reserve
		// holds it, and is put back once the collection freed space.
		if derr := r.store.Delete(ctx, reserveName); derr != nil {
			return nil, err
		}
		rep.ReserveUsed = true
		if l, err = r.acquire(ctx, "gc", id); err != nil {
			return nil, err
		}
	}
	defer func() {
		l.ReleaseAfter(ctx)
		if !opts.DryRun {
			if err := r.keepReserve(ctx); err != nil {
				rep.ReserveError = err.Error()
			}
		}
	}()
	live, stale, err := r.liveMarkers(ctx, backupLockPrefix)
	if err != nil {
		return nil, err
	}
	if len(live) > 0 {
		for _, m := range live {
			rep.BackupsRunning = append(rep.BackupsRunning, m.ID+"@"+m.Host)
		}
		sort.Strings(rep.BackupsRunning)
		return rep, fmt.Errorf("%s: %w: %s", r.store.Location(), ErrBackupsInProgress, strings.Join(rep.BackupsRunning, ", "))
	}
	if _, gcStale, err := r.liveMarkers(ctx, gcLockPrefix); err == nil {
		stale = append(stale, gcStale...)
	}
	if !opts.DryRun {
		for _, n := range stale {
			if err := r.store.Delete(ctx, n); err != nil && !errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("%s: remove stale marker %s: %w", r.store.Location(), n, err)
			}
		}
	}
	rep.StaleMarkers = len(stale)

	// Mark: every key a manifest names, in bounded memory (keySet).
	ids, sizes, err := r.listManifests(ctx)
	if err != nil {
		return nil, err
	}
	set := newKeySet(opts.TempDir, opts.MarkKeys)
	defer set.close()
	// One volume's backups name mostly the same keys: read one after the
	// other, their duplicates meet in the key set's buffer and are dropped
	// there, so the runs on disk grow with the distinct keys, not with the
	// number of backups. The index says which volume each backup is of.
	if known, _ := r.readIndex(ctx); len(known) > 0 {
		order := func(id string) string {
			if s, ok := known[id]; ok {
				return s.VolumeID + "\x00" + s.Started.UTC().Format(time.RFC3339Nano)
			}
			return "\xff" // not in the index: last
		}
		slices.SortStableFunc(ids, func(a, b string) int { return strings.Compare(order(a), order(b)) })
	}
	// Manifests several at a time (each read is a round trip), their keys
	// added under a lock; none is kept, as a repository's manifests may not
	// fit in memory together, only its summary for the index. Every
	// unreadable one is named.
	var bad []BadManifest
	var summaries []*Manifest
	var mu sync.Mutex
	err = r.eachManifest(ctx, ids, sizes, func(id string, m *Manifest, err error) error {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, ErrNotFound):
			return nil // deleted since the listing: its chunks may go
		case errors.Is(err, ErrBadManifest):
			bad = append(bad, BadManifest{ID: id, Error: err.Error()})
			return nil
		case err != nil:
			return fmt.Errorf("gc mark: %w", err)
		}
		rep.Manifests++
		if len(ids) <= maxIndexedByGC {
			summaries = append(summaries, summaryOf(m))
		}
		for _, k := range m.Chunks {
			if !k.IsZero() {
				if err := set.add(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		// Deleting with a manifest unread could delete its chunks.
		rep.BadManifests = bad
		return rep, fmt.Errorf("%s: gc mark: nothing deleted: %w", r.store.Location(), BadManifestsError(bad))
	}
	if err := set.finish(); err != nil {
		return nil, err
	}
	rep.MarkRuns = len(set.runs)
	if !opts.DryRun && len(ids) <= maxIndexedByGC {
		// Every manifest was just read: listings can start from here. An
		// index that cannot be written costs listings time, not data.
		rep.IndexWritten = r.WriteIndex(ctx, summaries) == nil
	}

	// Sweep, shard by shard (chunks/<kk>/): the keys in use of one shard
	// in memory, its listing, then its garbage deleted.
	var inUse []Key
	var seen []bool
	for b := 0; b < 256; b++ {
		if inUse, err = set.shard(byte(b), inUse); err != nil {
			return nil, err
		}
		seen = slices.Grow(seen[:0], len(inUse))[:len(inUse)]
		clear(seen)
		var garbage []Key
		var sizes []int64
		prefix := fmt.Sprintf("%s%02x/", chunkPrefix, b)
		err = r.store.List(ctx, prefix, func(info Info) error {
			k, err := ParseKey(info.Name[strings.LastIndexByte(info.Name, '/')+1:])
			if err != nil || int(k[0]) != b {
				return nil // not a chunk of this shard; leave foreign objects alone
			}
			rep.ChunksTotal++
			if i, ok := binarySearchKey(inUse, k); ok {
				seen[i] = true
				rep.ChunksInUse++
			} else {
				garbage = append(garbage, k)
				sizes = append(sizes, info.Size)
			}
			if opts.Progress != nil && rep.ChunksTotal%1024 == 0 {
				opts.Progress(rep.ChunksTotal)
			}
			return nil
		})
		if errors.Is(err, ErrNotFound) {
			err = nil // a shard no chunk was ever written to
		}
		if err != nil {
			return nil, fmt.Errorf("gc sweep: %w", err)
		}
		for _, ok := range seen {
			if !ok {
				rep.MissingChunks++
			}
		}
		for i, k := range garbage {
			if err := l.Err(); err != nil {
				return rep, fmt.Errorf("gc stopped: its marker cannot be refreshed: %w", err)
			}
			if !opts.DryRun {
				if err := r.DeleteChunk(ctx, k); err != nil && !errors.Is(err, ErrNotFound) {
					return rep, fmt.Errorf("gc sweep: %w", err)
				}
			}
			rep.ChunksDeleted++
			rep.BytesDeleted += sizes[i]
		}
	}
	if opts.Progress != nil {
		opts.Progress(rep.ChunksTotal)
	}
	if sr, ok := r.store.(StaleRemover); ok && !opts.DryRun {
		grace := opts.TempGrace
		if grace <= 0 {
			grace = DefaultTempGrace
		}
		n, err := sr.RemoveStale(ctx, grace)
		rep.TempsRemoved = n
		if err != nil {
			return rep, fmt.Errorf("gc: %w", err)
		}
	}
	if !opts.DryRun {
		// Claims of exclusive creates whose writers died (ClaimCreate).
		n, err := RemoveStaleClaims(ctx, r.store)
		rep.TempsRemoved += n
		if err != nil {
			return rep, fmt.Errorf("gc: stale claims: %w", err)
		}
	}
	if !opts.DryRun && rep.ChunksDeleted > 0 {
		if err := r.Sync(ctx); err != nil {
			return rep, err
		}
	}
	rep.Duration = time.Since(started)
	return rep, nil
}

// RemoveBackupMarker removes the marker of a backup known to be dead (a
// daemon restarting after a crash), so collections need not wait for it
// to go stale. A missing marker is not an error.
func (r *Repository) RemoveBackupMarker(ctx context.Context, id string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	if err := r.store.Delete(ctx, backupLockPrefix+id); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%s: remove marker of backup %s: %w", r.store.Location(), id, err)
	}
	return nil
}
