package dataplane

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
)

func groupVolume(t *testing.T, id string, size int64) *Volume {
	t.Helper()
	path := filepath.Join(t.TempDir(), id+".raw")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := OpenLiveVolume(id, path, VolumeOptions{Granularity: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// seqAt reads the sequence number a backup holds at off.
func seqAt(t *testing.T, repo *chunkstore.Repository, m *chunkstore.Manifest, off int64) uint64 {
	t.Helper()
	im := OpenImage(repo, m, ImageOptions{ReadAhead: -1})
	defer im.Close()
	b := make([]byte, 8)
	if err := im.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b)
}

// TestBackupGroupOneInstant: a writer stamps a sequence number on volume
// A, then the same number on volume B, then the next on A, flat out, into
// several places of each. Backed up as a group, the pair restores to one
// moment of the writer: B's number is A's or one behind it, never ahead,
// never two behind, 20 times in a row.
func TestBackupGroupOneInstant(t *testing.T) {
	ctx := context.Background()
	const size = 1 << 20
	a, b := groupVolume(t, "vm-root", size), groupVolume(t, "vm-data", size)
	repo, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	var written atomic.Uint64
	go func() {
		buf := make([]byte, 4096)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			binary.LittleEndian.PutUint64(buf, seq)
			off := int64(seq%16) * (size / 16) // spread over chunks
			for _, v := range []*Volume{a, b} {
				if err := v.WriteAt(ctx, buf, 0, false); err != nil {
					done <- err
					return
				}
				if err := v.WriteAt(ctx, buf, off+4096, false); err != nil {
					done <- err
					return
				}
			}
			written.Store(seq)
		}
	}()
	for round := range 20 {
		for start := written.Load(); written.Load() < start+50; {
			runtime.Gosched() // let the writer get going between rounds
		}
		ms, err := BackupGroup(ctx, []GroupMember{
			{Volume: a, Repo: repo, Opts: LiveBackupOptions{Chain: "c", Parallelism: 2}},
			{Volume: b, Repo: repo, Opts: LiveBackupOptions{Chain: "c", Parallelism: 2}},
		})
		if err != nil {
			t.Fatal(err)
		}
		sa, sb := seqAt(t, repo, ms[0], 0), seqAt(t, repo, ms[1], 0)
		if sb > sa || sa > sb+1 || sa == 0 {
			t.Fatalf("round %d: the group restores A at %d and B at %d, which no moment of the writer shows", round, sa, sb)
		}
		if round > 0 && ms[0].Mode != chunkstore.ModeIncremental {
			t.Errorf("round %d: %s, want incremental", round, ms[0].Mode)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBackupGroupFailure: a member that cannot be backed up fails the
// whole group, and leaves no manifest of the others.
func TestBackupGroupFailure(t *testing.T) {
	ctx := context.Background()
	a, b := groupVolume(t, "a", 256<<10), groupVolume(t, "b", 256<<10)
	repo, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	// b's chain is busy: the group is refused before anything freezes.
	b.mu.Lock()
	b.busy["c"] = true
	b.mu.Unlock()
	if _, err := BackupGroup(ctx, []GroupMember{{Volume: a, Repo: repo, Opts: LiveBackupOptions{Chain: "c"}}, {Volume: b, Repo: repo, Opts: LiveBackupOptions{Chain: "c"}}}); err == nil {
		t.Fatal("a group with a busy member ran")
	}
	b.mu.Lock()
	delete(b.busy, "c")
	b.mu.Unlock()
	// a's reservation was given back: a backs up alone.
	if _, err := a.Backup(ctx, repo, LiveBackupOptions{Chain: "c"}); err != nil {
		t.Fatalf("after a refused group: %v", err)
	}
	ids, _ := repo.ListBackups(ctx)
	if len(ids) != 1 {
		t.Fatalf("%d manifests, want only a's own", len(ids))
	}
	if _, err := BackupGroup(ctx, []GroupMember{{Volume: a, Repo: repo}, {Volume: a, Repo: repo}}); err == nil {
		t.Error("a group with one volume twice ran")
	}
}
