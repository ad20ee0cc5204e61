package dataplane

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/mem"
)

const liveChunk = 64 << 10

func newLive(t *testing.T, size int64, stateDir string) (*Volume, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.raw")
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{9}).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := OpenLiveVolume("vol1", path, VolumeOptions{StateDir: stateDir, Granularity: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return v, path
}

func newRepoLocal(t *testing.T) *chunkstore.Repository {
	t.Helper()
	s, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: liveChunk})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func restoreToBytes(t *testing.T, r *chunkstore.Repository, m *chunkstore.Manifest) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	if _, err := Restore(context.Background(), r, m, out, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLiveBackupIsPointInTime runs full and incremental backups while
// writers hammer the volume (WriteAt, WriteFile, Zero, Trim), and checks each backup against the volume's
// content captured at the freeze, with writes held off.
func TestLiveBackupIsPointInTime(t *testing.T) {
	ctx := context.Background()
	const size = 4<<20 + 12345
	v, path := newLive(t, size, t.TempDir())
	defer v.Close()
	r := newRepoLocal(t)

	var atFreeze []byte
	v.onFreeze = func() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
		}
		atFreeze = b
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			buf := make([]byte, 20000)
			for !stop.Load() {
				n := rng.IntN(len(buf)) + 1
				off := rng.Int64N(size - int64(n))
				for i := range buf[:n] {
					buf[i] = byte(rng.Uint32())
				}
				var err error
				switch rng.IntN(10) {
				case 0:
					err = v.Zero(ctx, off, int64(n), ZeroOptions{NoHole: rng.IntN(2) == 0})
				case 1:
					err = v.Trim(ctx, off, int64(n), false)
					// Trimmed data reads back as zeros on files that
					// punch holes, which is what the freeze copy sees.
				case 2, 3:
					// As the NBD server's spliced writes do.
					err = v.WriteFile(ctx, off, int64(n), false, func(f *os.File) error {
						_, err := f.WriteAt(buf[:n], off)
						return err
					})
				default:
					err = v.WriteAt(ctx, buf[:n], off, false)
				}
				if err != nil {
					t.Error(err)
					return
				}
				writes.Add(1)
				// Leave the (lower-priority, paced) backup some room:
				// these writers would otherwise hold both CPUs.
				time.Sleep(20 * time.Microsecond)
			}
		}()
	}
	var prev *chunkstore.Manifest
	for round := range 4 {
		m, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "store1", Parallelism: 3})
		if err != nil {
			t.Fatal(err)
		}
		wantMode := chunkstore.ModeIncremental
		if round == 0 {
			wantMode = chunkstore.ModeFull
		}
		if m.Mode != wantMode {
			t.Fatalf("round %d: mode %s (%s), want %s", round, m.Mode, m.Meta["fullReason"], wantMode)
		}
		if round > 0 && m.Parent != prev.ID {
			t.Fatalf("round %d: parent %s, want %s", round, m.Parent, prev.ID)
		}
		got := restoreToBytes(t, r, m)
		if !bytes.Equal(got, atFreeze) {
			t.Fatalf("round %d: backup differs from the volume at the freeze point", round)
		}
		prev = m
	}
	stop.Store(true)
	wg.Wait()
	if writes.Load() < 100 {
		t.Fatalf("only %d writes ran during the backups", writes.Load())
	}
}

func TestLiveIncrementalReadsOnlyChanges(t *testing.T) {
	ctx := context.Background()
	const size = 64 * liveChunk
	v, _ := newLive(t, size, t.TempDir())
	defer v.Close()
	r := newRepoLocal(t)
	full, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if full.Meta["fullReason"] == "" {
		t.Fatal("first backup records no reason for its full read")
	}
	_ = v.WriteAt(ctx, []byte("hello"), 3*liveChunk+10, false)
	_ = v.WriteAt(ctx, []byte("world"), 40*liveChunk-2, false) // straddles two chunks
	inc, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if inc.Mode != chunkstore.ModeIncremental || inc.Stats.ChunksRead != 3 || inc.Stats.BytesRead != 3*liveChunk {
		t.Fatalf("incremental: mode %s, read %d chunks (%d bytes), want 3", inc.Mode, inc.Stats.ChunksRead, inc.Stats.BytesRead)
	}
	// A second chain has its own map: its first backup is full, and it
	// does not reset chain s.
	other, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "t"})
	if err != nil || other.Mode != chunkstore.ModeFull {
		t.Fatalf("second chain: %v %v", other, err)
	}
	_ = v.WriteAt(ctx, []byte("x"), 0, false)
	inc2, _ := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if inc2.Stats.ChunksRead != 1 {
		t.Fatalf("chain s after chain t's backup read %d chunks, want 1", inc2.Stats.ChunksRead)
	}
}

func TestLiveBackupFailureMergesMapBack(t *testing.T) {
	ctx := context.Background()
	v, _ := newLive(t, 32*liveChunk, t.TempDir())
	defer v.Close()
	r := newRepoLocal(t)
	if _, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"}); err != nil {
		t.Fatal(err)
	}
	_ = v.WriteAt(ctx, []byte("change"), 5*liveChunk, false)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := v.Backup(cctx, r, LiveBackupOptions{Chain: "s"}); err == nil {
		t.Fatal("cancelled backup succeeded")
	}
	_, _, dirty, _ := v.ChainState("s")
	if dirty == 0 {
		t.Fatal("cancelled backup lost the changed-block map")
	}
	inc, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if err != nil || inc.Stats.ChunksRead != 1 {
		t.Fatalf("backup after the failure: %v, read %d chunks, want 1", err, inc.Stats.ChunksRead)
	}
}

func TestChangedBlockStatePersistence(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	v, path := newLive(t, 16*liveChunk, state)
	r := newRepoLocal(t)
	if _, err := v.Backup(ctx, r, LiveBackupOptions{Chain: "s"}); err != nil {
		t.Fatal(err)
	}
	_ = v.WriteAt(ctx, []byte("after"), 2*liveChunk, false)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Clean restart: the map survives, the next backup is incremental.
	v2, err := OpenLiveVolume("vol1", path, VolumeOptions{StateDir: state, Granularity: 4096})
	if err != nil {
		t.Fatal(err)
	}
	inc, err := v2.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if err != nil || inc.Mode != chunkstore.ModeIncremental || inc.Stats.ChunksRead != 1 {
		t.Fatalf("after a clean restart: %v mode %s read %d", err, inc.Mode, inc.Stats.ChunksRead)
	}
	// Unclean stop: v2 is never closed, as after kill -9. The next open
	// distrusts the map and the next backup is full, saying why.
	v3, err := OpenLiveVolume("vol1", path, VolumeOptions{StateDir: state, Granularity: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	m, err := v3.Backup(ctx, r, LiveBackupOptions{Chain: "s"})
	if err != nil || m.Mode != chunkstore.ModeFull || m.Meta["fullReason"] == "" {
		t.Fatalf("after an unclean stop: %v mode %s reason %q", err, m.Mode, m.Meta["fullReason"])
	}
	t.Logf("full read reason: %s", m.Meta["fullReason"])
}

// BenchmarkGuestWriteDuringBackup measures a 64 KiB guest write into a
// chunk that a running backup has yet to read: the copy-before-write path.
func BenchmarkGuestWriteDuringBackup(b *testing.B) {
	const size = 256 << 20
	v := benchVolume(b, size)
	plan, _ := PlanBackup(size, 4<<20, nil, nil)
	snap := newSnapshot(v, 4<<20, plan.ToRead, b.TempDir())
	snap.arena = newBlockArena(cowBlock, size) // measure the copy, not the spill
	v.snaps = append(v.snaps, snap)
	defer func() { snap.close() }()
	buf := make([]byte, 64<<10)
	ctx := context.Background()
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		if off == 0 {
			// A fresh snapshot each pass, so every write preserves.
			b.StopTimer()
			snap.close()
			snap = newSnapshot(v, 4<<20, plan.ToRead, b.TempDir())
			snap.arena = newBlockArena(cowBlock, size)
			v.snaps[0] = snap
			b.StartTimer()
		}
		if err := v.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % size
	}
}

// BenchmarkGuestWrite is the same write with no backup running.
func BenchmarkGuestWrite(b *testing.B) {
	const size = 256 << 20
	v := benchVolume(b, size)
	buf := make([]byte, 64<<10)
	ctx := context.Background()
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		if err := v.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % size
	}
}

// BenchmarkGuestRandomWriteDuringBackup: 4 KiB writes at random places
// into chunks a running backup has yet to read.
func BenchmarkGuestRandomWriteDuringBackup(b *testing.B) {
	b.Run("backup", func(b *testing.B) { benchRandomWrite(b, true) })
	b.Run("alone", func(b *testing.B) { benchRandomWrite(b, false) })
}

func benchRandomWrite(b *testing.B, backup bool) {
	const size = 256 << 20
	v := benchVolume(b, size)
	if backup {
		plan, _ := PlanBackup(size, 4<<20, nil, nil)
		snap := newSnapshot(v, 4<<20, plan.ToRead, b.TempDir())
		v.snaps = append(v.snaps, snap)
		defer snap.close()
	}
	buf := make([]byte, 4096)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 1))
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if err := v.WriteAt(ctx, buf, r.Int64N(size/4096)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
}

// benchVolume returns a live volume full of data, in the page cache, as a
// running guest's is; it closes with the benchmark.
func benchVolume(b *testing.B, size int) *Volume {
	b.Helper()
	path := filepath.Join(b.TempDir(), "vol.raw")
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{3}).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	v, err := OpenLiveVolume("bench", path, VolumeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v
}

func TestPaceYieldsToWritersButProgresses(t *testing.T) {
	v, _ := newLive(t, 1<<20, "")
	defer v.Close()
	waits := 0
	v.sleep = func(d time.Duration) { waits++; time.Sleep(d) }
	v.lastWrite.Store(nanotime() - int64(time.Second))
	v.pace(4 << 20) // no client has written lately: no wait
	if waits != 0 {
		t.Fatalf("pace waited %d times with no recent client writes", waits)
	}
	// A client wrote just now, during a backup, then went quiet: one
	// short wait (two if the first ends exactly at the quiet time).
	v.pacing.Add(1)
	defer v.pacing.Add(-1)
	_ = v.WriteAt(context.Background(), []byte{1}, 0, false)
	waits = 0
	v.pace(4 << 20)
	if waits < 1 || waits > 2 {
		t.Fatalf("pace after one write waited %d times, want 1", waits)
	}
	// Clients never stop writing (their last write always looks fresh):
	// the waits are bounded, so the backup still progresses.
	v.lastWrite.Store(nanotime() + int64(time.Hour))
	waits = 0
	v.pace(4 << 20)
	if waits != paceWaitsPer4MiB {
		t.Fatalf("pace under constant writes waited %d times, want %d", waits, paceWaitsPer4MiB)
	}
}

// TestTakenIDAndForeignParent: a backup id taken in the repository is
// refused before any data moves; a chain whose last backup is of another
// volume makes the next backup full, saying why.
func TestTakenIDAndForeignParent(t *testing.T) {
	ctx := context.Background()
	v, _ := newLive(t, 1<<20, "")
	defer v.Close()
	inner := mem.New()
	repo, err := chunkstore.Init(ctx, inner, chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	m, err := v.Backup(ctx, repo, LiveBackupOptions{Chain: "c"})
	if err != nil {
		t.Fatal(err)
	}
	objects := func() int {
		n := 0
		_ = inner.List(ctx, "chunks/", func(chunkstore.Info) error { n++; return nil })
		return n
	}
	before := objects()
	_ = v.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, false)
	if _, err := v.Backup(ctx, repo, LiveBackupOptions{Chain: "c", ID: m.ID}); !errors.Is(err, chunkstore.ErrBackupExists) {
		t.Fatalf("backup under a taken id: %v, want ErrBackupExists", err)
	}
	if objects() != before {
		t.Error("a refused backup stored chunks")
	}
	if got, _ := repo.LoadManifest(ctx, m.ID); got.Stats != m.Stats {
		t.Error("the backup under the taken id changed")
	}
	// The chain's last backup is replaced by another volume's (as a
	// backup written by another daemon under that id would be).
	other := *m
	other.VolumeID = "someone-else"
	_ = repo.DeleteManifest(ctx, m.ID)
	if err := repo.SaveManifest(ctx, &other); err != nil {
		t.Fatal(err)
	}
	next, err := v.Backup(ctx, repo, LiveBackupOptions{Chain: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if next.Mode != chunkstore.ModeFull || !strings.Contains(next.Meta["fullReason"], "someone-else") {
		t.Errorf("backup after a foreign parent: %s, %q", next.Mode, next.Meta["fullReason"])
	}
}
