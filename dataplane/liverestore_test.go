package dataplane_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/faulty"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

type slowStore struct {
	chunkstore.Store
	delay time.Duration
}

func (s slowStore) Get(ctx context.Context, name string) ([]byte, error) {
	time.Sleep(s.delay)
	return s.Store.Get(ctx, name)
}

func restoreSetup(t *testing.T, store chunkstore.Store) (*chunkstore.Repository, *chunkstore.Manifest, []byte, string) {
	t.Helper()
	data := image(11, 24*testChunk)
	r, m, path := backupAndTarget(t, store, testChunk, data)
	return r, m, data, path
}

// backupAndTarget backs data up into a new repository on store and makes
// an empty (sparse) file of its size to restore into.
func backupAndTarget(t *testing.T, store chunkstore.Store, chunk int, data []byte) (*chunkstore.Repository, *chunkstore.Manifest, string) {
	t.Helper()
	ctx := context.Background()
	r, err := chunkstore.Init(ctx, store, chunkstore.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{VolumeID: "src"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "new.raw")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return r, m, path
}

// TestLiveRestore: the new volume reads as the backup from the start,
// while the background copy runs; client writes land on top and survive
// the copy; the state file goes when the copy is complete.
func TestLiveRestore(t *testing.T) {
	ctx := context.Background()
	r, m, data, path := restoreSetup(t, slowStore{Store: mem.New(), delay: 2 * time.Millisecond})
	v, err := dataplane.OpenLiveVolume("new", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	state := path + ".restore"
	if err := v.StartRestore(r, m, state, "test"); err != nil {
		t.Fatal(err)
	}
	// The background copy is throttled to 256 KiB/s, so it cannot finish
	// the 1.5 MiB in under 5 s (a token bucket passes at most its burst
	// ahead of its rate): the client's I/O below surely overlaps it.
	var copyErr error
	var wg sync.WaitGroup
	var prog dataplane.Progress
	cctx, cancel := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyErr = v.RunRestore(cctx, dataplane.RestoreRunOptions{Parallelism: 2, Progress: &prog, BytesPerSec: 256 << 10})
	}()

	// Meanwhile a client writes into chunks (partly) and reads it all.
	want := append([]byte(nil), data...)
	for _, off := range []int64{5*testChunk + 100, 17 * testChunk, 23*testChunk - 10} {
		p := bytes.Repeat([]byte{0xee}, 3000)
		p = p[:min(int64(len(p)), int64(len(data))-off)]
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	got := make([]byte, len(data))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("reads during the restore differ from the backup plus the writes")
	}
	if _, ok := v.Restoring(); !ok {
		t.Fatal("the throttled copy finished before the client's I/O: no overlap was tested")
	}
	// Stop the throttled copy and finish at full speed: a second
	// RunRestore takes over where the first stopped.
	cancel()
	wg.Wait()
	if !errors.Is(copyErr, context.Canceled) {
		t.Fatalf("cancelled copy: %v", copyErr)
	}
	if err := v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: 2, Progress: &prog}); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.Restoring(); ok {
		t.Fatal("still restoring after RunRestore returned")
	}
	if prog.Done() != int64(len(data)) {
		t.Errorf("progress %d of %d", prog.Done(), len(data))
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, want) {
		t.Fatal("the restored file differs from the backup plus the writes")
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatal("state file left after the restore")
	}
	// A backup of a volume being restored is refused.
	v2, _ := dataplane.OpenLiveVolume("again", path, dataplane.VolumeOptions{})
	defer v2.Close()
	_ = v2.StartRestore(r, m, path+".r2", "test")
	if _, err := v2.Backup(ctx, r, dataplane.LiveBackupOptions{Chain: "c"}); err == nil || !strings.Contains(err.Error(), "being restored") {
		t.Errorf("backup during a restore: %v", err)
	}
}

// TestLiveRestoreResumeAndFailures: a crash in the middle resumes from
// the state file with flushed writes intact; a repository that fails
// makes reads of chunks not yet copied fail (never read wrong data) and
// the copy retries until it comes back.
func TestLiveRestoreResumeAndFailures(t *testing.T) {
	ctx := context.Background()
	fs := faulty.New(mem.New())
	var broken atomic.Bool
	fs.FailGet = func(name string) bool { return broken.Load() && strings.HasPrefix(name, "chunks/") }
	fs.Transient = true
	r, m, data, path := restoreSetup(t, fs)
	state := path + ".restore"
	v, err := dataplane.OpenLiveVolume("new", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.StartRestore(r, m, state, "src-json"); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), data...)
	// Touch chunks 2 and 9 (restore on access), write into 9, flush.
	p := make([]byte, 10)
	if err := v.ReadAt(ctx, p, 2*testChunk); err != nil || !bytes.Equal(p, data[2*testChunk:2*testChunk+10]) {
		t.Fatalf("read: %v", err)
	}
	if err := v.WriteAt(ctx, []byte("flushed!"), 9*testChunk+7, false); err != nil {
		t.Fatal(err)
	}
	copy(want[9*testChunk+7:], "flushed!")
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// "Crash": the process is gone without Close; a new one resumes.
	st, err := dataplane.ReadRestoreState(state)
	if err != nil || st.Source != "src-json" || st.BackupID != m.ID {
		t.Fatalf("state: %+v %v", st, err)
	}
	v2, err := dataplane.OpenLiveVolume("new", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	if err := v2.ResumeRestore(r, state); err != nil {
		t.Fatal(err)
	}
	done, total := v2.RestoreProgress()
	if done < 2*testChunk || done >= total {
		t.Fatalf("resumed with %d of %d bytes done", done, total)
	}
	// The repository fails: a read of a chunk not copied is an error.
	broken.Store(true)
	if err := v2.ReadAt(ctx, p, 20*testChunk); err == nil {
		t.Fatal("read of an uncopied chunk succeeded while the repository fails")
	}
	if err := v2.ReadAt(ctx, p, 9*testChunk+7); err != nil || string(p[:8]) != "flushed!" {
		t.Fatalf("read of a restored chunk: %q %v", p, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- v2.RunRestore(cctx, dataplane.RestoreRunOptions{Parallelism: 2}) }()
	// The copy keeps trying while the repository fails: wait for a failed
	// try (and for a retry after it), not for a time.
	for deadline := time.Now().Add(30 * time.Second); v2.RestoreFailures() < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the copy did not try again while the repository failed")
		}
		select {
		case err := <-errc:
			t.Fatalf("the copy gave up while the repository failed transiently: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	broken.Store(false)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("the copy did not finish after the repository came back")
	}
	cancel()
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, want) {
		t.Fatal("resumed restore differs from the backup plus the flushed write")
	}
}

// TestLiveRestoreStopsOnCorruptChunk: a corrupt chunk cannot heal, so the
// background copy ends with an error naming it instead of retrying for
// ever, and reads of that chunk fail while the rest of the volume reads.
func TestLiveRestoreStopsOnCorruptChunk(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	r, m, data, path := restoreSetup(t, inner)
	victim := m.Chunks[5]
	if err := inner.Corrupt("chunks/"+victim.String()[:2]+"/"+victim.String(), 3); err != nil {
		t.Fatal(err)
	}
	v, err := dataplane.OpenLiveVolume("new", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.StartRestore(r, m, path+".restore", "src"); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: 2}) }()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), victim.String()) {
			t.Fatalf("RunRestore = %v, want an error naming corrupt chunk %s", err, victim)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunRestore kept retrying a corrupt chunk")
	}
	uses := int64(0) // chunks of the image with the corrupt chunk's content
	for _, k := range m.Chunks {
		if k == victim {
			uses++
		}
	}
	if n := v.RestoreFailures(); n < 1 || n > uses {
		t.Errorf("%d failed copies of the corrupt chunk, used %d times: want each tried once, no retry", n, uses)
	}
	p := make([]byte, 10)
	if err := v.ReadAt(ctx, p, 5*testChunk); err == nil {
		t.Error("read of the corrupt chunk succeeded")
	}
	if err := v.ReadAt(ctx, p, 6*testChunk); err != nil || !bytes.Equal(p, data[6*testChunk:6*testChunk+10]) {
		t.Errorf("read of a good chunk: %v", err)
	}
}

// TestLiveRestoreFetchesIntoBuffers: the background copy reads each chunk
// from a local ImageStore into a pooled chunk buffer, so a restore of 48
// chunks allocates a few chunk buffers in all, not one or two per chunk
// (it did, fetching with no buffer). Half the chunks are stored as is,
// half compressed.
func TestLiveRestoreFetchesIntoBuffers(t *testing.T) {
	if raceDetector {
		t.Skip("sync.Pool drops buffers on purpose under the race detector")
	}
	ctx := context.Background()
	const chunk, n = 1 << 20, 48
	s, err := local.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	data := append(randomData(3, n/2*chunk), image(4, n/2*chunk)...)
	r, m, path := backupAndTarget(t, s, chunk, data)
	v, err := dataplane.OpenLiveVolume("new", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.StartRestore(r, m, path+".restore", "test"); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the restored volume differs from the backup")
	}
	// Two workers: two chunk buffers (each a fetch's and its
	// read-back's), the repository's decode scratch; 12 chunks' worth
	// leaves room for the rest and fails a copy that allocates per chunk (48 or more).
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d chunks restored, %.1f MiB allocated", n, float64(alloc)/(1<<20))
	if alloc > 12*chunk {
		t.Errorf("the live restore of %d chunks allocated %.1f MiB: more than 12 chunks' worth", n, float64(alloc)/(1<<20))
	}
}
