package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
)

// saveBackup stores chunks and a manifest naming them, as a backup would,
// inside a lease.
func saveBackup(t *testing.T, r *chunkstore.Repository, chunks ...[]byte) string {
	t.Helper()
	return saveBackupAs(t, r, chunkstore.NewID(), chunks...)
}

// saveBackupOf is saveBackup of a named volume.
func saveBackupOf(t *testing.T, r *chunkstore.Repository, volume string, chunks ...[]byte) string {
	t.Helper()
	return saveBackupFull(t, r, chunkstore.NewID(), volume, chunks...)
}

// saveBackupAs is saveBackup under a given id.
func saveBackupAs(t *testing.T, r *chunkstore.Repository, id string, chunks ...[]byte) string {
	t.Helper()
	return saveBackupFull(t, r, id, "vol", chunks...)
}

func saveBackupFull(t *testing.T, r *chunkstore.Repository, id, volume string, chunks ...[]byte) string {
	t.Helper()
	ctx := context.Background()
	l, err := r.BeginBackup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Release(ctx) }()
	m := &chunkstore.Manifest{
		Version: chunkstore.ManifestVersion, ID: id, VolumeID: volume, Mode: "full",
		Size: int64(len(chunks)) * int64(r.ChunkSize()), ChunkSize: r.ChunkSize(),
		Started: time.Now().UTC(), Finished: time.Now().UTC(),
	}
	for _, c := range chunks {
		if chunkstore.IsZero(c) {
			m.Chunks = append(m.Chunks, chunkstore.ZeroKey)
			continue
		}
		k := r.Key(c)
		if _, err := r.PutChunk(ctx, k, c); err != nil {
			t.Fatal(err)
		}
		m.Chunks = append(m.Chunks, k)
	}
	if err := r.SaveManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	return id
}

func localRepo(t *testing.T) *chunkstore.Repository {
	t.Helper()
	s, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func countChunks(t *testing.T, r *chunkstore.Repository) int {
	t.Helper()
	n := 0
	if err := r.ListChunks(context.Background(), func(chunkstore.Key, int64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestGCDeletesOnlyUnreferencedChunks(t *testing.T) {
	ctx := context.Background()
	r := localRepo(t)
	cs := r.ChunkSize()
	shared, onlyA, onlyB := randomBytes(1, cs), randomBytes(2, cs), randomBytes(3, cs)
	a := saveBackup(t, r, shared, onlyA, make([]byte, cs))
	b := saveBackup(t, r, shared, onlyB)
	if n := countChunks(t, r); n != 3 {
		t.Fatalf("%d chunks stored, want 3", n)
	}

	// Nothing is garbage while both backups exist.
	rep, err := r.GC(ctx, chunkstore.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksDeleted != 0 || rep.ChunksInUse != 3 || rep.Manifests != 2 {
		t.Fatalf("GC with every chunk in use: %+v", rep)
	}

	if err := r.DeleteManifest(ctx, a); err != nil {
		t.Fatal(err)
	}
	// A dry run counts and deletes nothing.
	rep, err = r.GC(ctx, chunkstore.GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksDeleted != 1 || rep.BytesDeleted <= 0 || countChunks(t, r) != 3 {
		t.Fatalf("dry run: %+v, %d chunks left", rep, countChunks(t, r))
	}
	rep, err = r.GC(ctx, chunkstore.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksDeleted != 1 || rep.ChunksInUse != 2 || rep.Manifests != 1 || rep.MissingChunks != 0 {
		t.Fatalf("GC after deleting backup A: %+v", rep)
	}
	if has, _ := r.HasChunk(ctx, r.Key(onlyA)); has {
		t.Fatal("chunk only backup A named survived GC")
	}
	vr, err := r.Verify(ctx, []string{b}, chunkstore.VerifyOptions{})
	if err != nil || !vr.OK() {
		t.Fatalf("backup B after GC: %+v %v", vr, err)
	}
	// No marker is left behind by backups or collections.
	var markers []string
	_ = r.Store().List(ctx, "locks/", func(i chunkstore.Info) error { markers = append(markers, i.Name); return nil })
	if len(markers) != 0 {
		t.Fatalf("markers left: %v", markers)
	}
}

func TestGCAndBackupsExcludeEachOther(t *testing.T) {
	defer func(h, s time.Duration) { chunkstore.HeartbeatInterval, chunkstore.StaleAfter = h, s }(chunkstore.HeartbeatInterval, chunkstore.StaleAfter)
	chunkstore.HeartbeatInterval, chunkstore.StaleAfter = 50*time.Millisecond, 2*time.Second

	ctx := context.Background()
	r := localRepo(t)
	cs := r.ChunkSize()
	old := saveBackup(t, r, randomBytes(10, cs))
	if err := r.DeleteManifest(ctx, old); err != nil {
		t.Fatal(err)
	}

	// A backup in progress (here: found the old chunk stored and is about
	// to name it) makes GC withdraw without deleting anything.
	id := chunkstore.NewID()
	l, err := r.BeginBackup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // several heartbeats: still live
	rep, err := r.GC(ctx, chunkstore.GCOptions{})
	if !errors.Is(err, chunkstore.ErrBackupsInProgress) || len(rep.BackupsRunning) != 1 {
		t.Fatalf("GC during a backup: %+v %v", rep, err)
	}
	if countChunks(t, r) != 1 {
		t.Fatal("GC deleted a chunk while a backup was running")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// A backup that starts while a collection holds its marker waits for
	// it: hold a GC marker by hand through a second repository handle (as
	// another host would), and release it after a while.
	gcMarker := "locks/gc-" + chunkstore.NewID()
	putMarker := func(hb time.Time) {
		b := []byte(`{"kind":"gc","id":"x","host":"other","heartbeat":"` + hb.UTC().Format(time.RFC3339Nano) + `"}`)
		if err := r.Store().Put(ctx, gcMarker, b); err != nil {
			t.Fatal(err)
		}
		if err := r.Store().Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	putMarker(time.Now())
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = r.Store().Delete(ctx, gcMarker)
	}()
	t0 := time.Now()
	l2, err := r.BeginBackup(ctx, chunkstore.NewID())
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(t0); waited < 250*time.Millisecond {
		t.Fatalf("backup started after %v while a collection ran", waited)
	}
	_ = l2.Release(ctx)

	// A cancelled wait fails, naming the collection, and leaves no marker.
	putMarker(time.Now())
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = r.BeginBackup(cctx, chunkstore.NewID())
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled wait: %v", err)
	}
	// A stale marker (its holder died) neither blocks backups nor GC,
	// and GC removes it.
	putMarker(time.Now().Add(-time.Hour))
	l3, err := r.BeginBackup(ctx, chunkstore.NewID())
	if err != nil {
		t.Fatal(err)
	}
	_ = l3.Release(ctx)
	deadBackup := "locks/backup-" + chunkstore.NewID()
	if err := r.Store().Put(ctx, deadBackup, []byte(`{"kind":"backup","heartbeat":"2001-01-01T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	_ = r.Store().Sync(ctx)
	rep, err = r.GC(ctx, chunkstore.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksDeleted != 1 || rep.StaleMarkers != 2 {
		t.Fatalf("GC with stale markers: %+v", rep)
	}
	var markers []string
	_ = r.Store().List(ctx, "locks/", func(i chunkstore.Info) error { markers = append(markers, i.Name); return nil })
	if len(markers) != 0 {
		t.Fatalf("markers left: %v", markers)
	}
}

// TestGCRefusesUnreadableManifest: a manifest that cannot be read could
// name any chunk, so nothing is deleted.
func TestGCRefusesUnreadableManifest(t *testing.T) {
	ctx := context.Background()
	r, s := newRepo(t, chunkstore.CompressionZstd)
	keep := saveBackup(t, r, randomBytes(20, r.ChunkSize()))
	gone := saveBackup(t, r, randomBytes(21, r.ChunkSize()))
	_ = r.DeleteManifest(ctx, gone)
	_ = s.Corrupt("manifests/"+keep, 10)
	if _, err := r.GC(ctx, chunkstore.GCOptions{}); err == nil {
		t.Fatal("GC ran with an unreadable manifest")
	}
	if countChunks(t, r) != 2 {
		t.Fatal("GC deleted chunks with an unreadable manifest")
	}
}

// TestGCRemovesStaleTemporaries: the temporary file a writer killed
// before its Sync left behind is removed by the next collection once it is
// older than the grace period; a young one (a writer still running) stays.
func TestGCRemovesStaleTemporaries(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	saveBackup(t, r, make([]byte, 64<<10))
	dead, _ := local.Open(dir)
	_ = dead.Put(ctx, "chunks/ab/dead", []byte("never synced")) // the writer dies here
	old := time.Now().Add(-48 * time.Hour)
	temps := func() (names []string) {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
				names = append(names, p)
			}
			return nil
		})
		return names
	}
	for _, p := range temps() {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	alive, _ := local.Open(dir)
	_ = alive.Put(ctx, "chunks/ab/alive", []byte("a writer still running"))
	rep, err := r.GC(ctx, chunkstore.GCOptions{TempGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rep.TempsRemoved != 1 || len(temps()) != 1 {
		t.Fatalf("GC removed %d temporaries and left %v; want the dead writer's removed, the live one's kept", rep.TempsRemoved, temps())
	}
	if err := alive.Sync(ctx); err != nil {
		t.Fatalf("the live writer's object was lost: %v", err)
	}
}

// TestMarkerOfDeadProcess: a collection's marker left by a process of this
// boot and PID namespace that no longer exists is stale at once, so a
// backup does not wait StaleAfter for it; one whose process lives is
// waited for.
func TestMarkerOfDeadProcess(t *testing.T) {
	ctx := context.Background()
	s, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip("no boot id here")
	}
	ns, _ := os.Readlink("/proc/self/ns/pid")
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	marker := func(pid int) []byte {
		now := time.Now().UTC().Format(time.RFC3339Nano)
		return []byte(fmt.Sprintf(`{"kind":"gc","id":"x","host":"h","pid":%d,"started":%q,"heartbeat":%q,"boot":%q,"pidns":%q}`,
			pid, now, now, strings.TrimSpace(string(boot)), ns))
	}
	for _, tc := range []struct {
		name  string
		pid   int
		waits bool
	}{{"dead", dead.Process.Pid, false}, {"alive", os.Getpid(), true}} {
		if err := s.Put(ctx, "locks/gc-"+tc.name, marker(tc.pid)); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		bctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		l, err := r.BeginBackup(bctx, chunkstore.NewID())
		cancel()
		if tc.waits != (err != nil) {
			t.Errorf("%s writer: BeginBackup %v, want waiting %v", tc.name, err, tc.waits)
		}
		if l != nil {
			l.ReleaseAfter(ctx)
		}
		_ = s.Delete(ctx, "locks/gc-"+tc.name)
	}
}

// TestGCMarkSpills: a mark held to a few keys at a time (sorted runs on
// disk, merged shard by shard) finds what the in-memory one finds: the
// chunks in use stay, the garbage goes, a missing chunk is counted.
func TestGCMarkSpills(t *testing.T) {
	ctx := context.Background()
	r := localRepo(t)
	cs := r.ChunkSize()
	var keep [][]byte
	for i := 0; i < 12; i++ {
		keep = append(keep, randomBytes(uint64(100+i), cs))
	}
	saveBackup(t, r, keep[:6]...)
	saveBackup(t, r, keep[3:]...)
	gone := saveBackup(t, r, randomBytes(200, cs), randomBytes(201, cs), keep[0])
	if err := r.DeleteManifest(ctx, gone); err != nil {
		t.Fatal(err)
	}
	// One chunk in use lost behind the repository's back.
	lost := r.Key(keep[11])
	if err := r.Store().Delete(ctx, "chunks/"+lost.String()[:2]+"/"+lost.String()); err != nil {
		t.Fatal(err)
	}
	rep, err := r.GC(ctx, chunkstore.GCOptions{MarkKeys: 2, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksDeleted != 2 || rep.ChunksInUse != 11 || rep.MissingChunks != 1 {
		t.Fatalf("GC with a mark of 2 keys at a time: %+v", rep)
	}
	for _, d := range keep[:11] {
		if has, _ := r.HasChunk(ctx, r.Key(d)); !has {
			t.Fatal("a chunk in use was deleted")
		}
	}
}

// TestGCMarksChainsTogether: with the index, a collection reads each
// volume's backups one after the other, so their shared keys meet in the
// mark's buffer: 60 backups of 3 volumes (40 chunks, 2 new each time, 234
// distinct) through a buffer of 200 keys write runs of distinct keys only,
// where the same backups in the order of their random ids write many.
func TestGCMarksChainsTogether(t *testing.T) {
	ctx := context.Background()
	r := localRepo(t)
	cs := r.ChunkSize()
	vols := make([][][]byte, 3)
	for v := range vols {
		for i := range 40 {
			vols[v] = append(vols[v], randomBytes(uint64(1000*v+i), cs))
		}
	}
	for n := range 20 {
		for v := range vols {
			vols[v][n%40] = randomBytes(uint64(100000+1000*v+n), cs)
			vols[v][(n+20)%40] = randomBytes(uint64(200000+1000*v+n), cs)
			saveBackupOf(t, r, fmt.Sprint("vol", v), vols[v]...)
		}
	}
	first, err := r.GC(ctx, chunkstore.GCOptions{MarkKeys: 200, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	second, err := r.GC(ctx, chunkstore.GCOptions{MarkKeys: 200, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("runs written: %d without the index, %d with it", first.MarkRuns, second.MarkRuns)
	// By volume the runs hold distinct keys, each run more than half the
	// buffer: at most 234/100+1.
	if second.MarkRuns > second.ChunksInUse/100+1 || first.MarkRuns <= second.MarkRuns || second.ChunksInUse != first.ChunksInUse {
		t.Fatalf("mark runs: %d in listing order, %d by volume; chunks in use %d and %d", first.MarkRuns, second.MarkRuns, first.ChunksInUse, second.ChunksInUse)
	}
}
