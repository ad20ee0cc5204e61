package dataplane_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/faulty"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

const testChunk = 64 << 10

func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1}).Read(b)
	return b
}

// image returns n bytes mixing random, repeated-text and zero chunks.
func image(seed uint64, n int) []byte {
	b := randomData(seed, n)
	for off := 0; off < n; off += testChunk {
		end := min(off+testChunk, n)
		switch (off / testChunk) % 4 {
		case 2:
			copy(b[off:end], bytes.Repeat([]byte(fmt.Sprintf("text %d ", off)), testChunk))
		case 3:
			clear(b[off:end])
		}
	}
	return b
}

type repoKind struct {
	name string
	open func(t *testing.T) (*chunkstore.Repository, chunkstore.Store)
}

var repoKinds = []repoKind{
	{"mem", func(t *testing.T) (*chunkstore.Repository, chunkstore.Store) {
		s := mem.New()
		r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: testChunk})
		if err != nil {
			t.Fatal(err)
		}
		return r, s
	}},
	{"local", func(t *testing.T) (*chunkstore.Repository, chunkstore.Store) {
		s, err := local.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: testChunk})
		if err != nil {
			t.Fatal(err)
		}
		return r, s
	}},
}

func restoreBytes(t *testing.T, r *chunkstore.Repository, m *chunkstore.Manifest) []byte {
	t.Helper()
	target := filepath.Join(t.TempDir(), "restored.raw")
	if _, err := dataplane.Restore(context.Background(), r, m, target, dataplane.RestoreOptions{Parallelism: 3}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	b, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripSizes(t *testing.T) {
	for _, rk := range repoKinds {
		for _, size := range []int{0, 1, testChunk - 1, testChunk, testChunk + 1, 7*testChunk/2 + 3, 16 * testChunk} {
			for _, par := range []int{1, 3} {
				t.Run(fmt.Sprintf("%s/size=%d/par=%d", rk.name, size, par), func(t *testing.T) {
					r, _ := rk.open(t)
					data := image(uint64(size), size)
					m, err := dataplane.Backup(context.Background(), r, bytes.NewReader(data), int64(size), dataplane.BackupOptions{VolumeID: "v", Parallelism: par})
					if err != nil {
						t.Fatal(err)
					}
					if m.Stats.BytesRead != int64(size) || m.Stats.ChunksTotal != chunkstore.ChunkCount(int64(size), testChunk) {
						t.Fatalf("stats: %+v", m.Stats)
					}
					loaded, err := r.LoadManifest(context.Background(), m.ID)
					if err != nil {
						t.Fatal(err)
					}
					if got := restoreBytes(t, r, loaded); !bytes.Equal(got, data) {
						t.Fatalf("restored %d bytes differ from the %d backed up", len(got), len(data))
					}
				})
			}
		}
	}
}

func TestDedupAndZeroChunks(t *testing.T) {
	for _, rk := range repoKinds {
		t.Run(rk.name, func(t *testing.T) {
			r, _ := rk.open(t)
			ctx := context.Background()
			data := image(1, 40*testChunk)
			m1, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m1.Stats.ChunksZero != 10 || m1.Stats.ChunksNew != 30 {
				t.Fatalf("first backup: %d zero, %d new chunks; want 10, 30", m1.Stats.ChunksZero, m1.Stats.ChunksNew)
			}
			m2, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m2.Stats.ChunksNew != 0 || m2.Stats.BytesStored != 0 || m2.Stats.ChunksDedup != 30 {
				t.Fatalf("second backup of the same data: %+v; want nothing stored", m2.Stats)
			}
			data[5*testChunk+100] ^= 0xff
			m3, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m3.Stats.ChunksNew != 1 {
				t.Fatalf("one changed chunk: stored %d chunks, want 1", m3.Stats.ChunksNew)
			}
			n := 0
			if err := r.ListChunks(ctx, func(chunkstore.Key, int64) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if n != 31 {
				t.Fatalf("repository holds %d chunks, want 31", n)
			}
		})
	}
}

func TestIncremental(t *testing.T) {
	for _, rk := range repoKinds {
		t.Run(rk.name, func(t *testing.T) {
			r, _ := rk.open(t)
			ctx := context.Background()
			data := image(2, 20*testChunk+999)
			parent, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{VolumeID: "v"})
			if err != nil {
				t.Fatal(err)
			}
			// Change two places, one of them straddling a chunk boundary.
			copy(data[3*testChunk+10:], "changed!")
			copy(data[8*testChunk-4:], "straddle")
			changed := []dataplane.Extent{{Offset: 3*testChunk + 10, Length: 8}, {Offset: 8*testChunk - 4, Length: 8}}
			var p dataplane.Progress
			m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{
				VolumeID: "v", Parent: parent, Changed: changed, Progress: &p,
			})
			if err != nil {
				t.Fatal(err)
			}
			if m.Mode != chunkstore.ModeIncremental || m.Parent != parent.ID {
				t.Fatalf("mode %q parent %q", m.Mode, m.Parent)
			}
			if m.Stats.ChunksRead != 3 || m.Stats.BytesRead != 3*testChunk || m.Stats.ChunksReused != 18 {
				t.Fatalf("incremental read %d chunks (%d bytes), reused %d; want 3, %d, 18", m.Stats.ChunksRead, m.Stats.BytesRead, m.Stats.ChunksReused, 3*testChunk)
			}
			if p.Done() != 3*testChunk || p.Total() != 3*testChunk {
				t.Fatalf("progress %d/%d, want %d/%d", p.Done(), p.Total(), 3*testChunk, 3*testChunk)
			}
			if got := restoreBytes(t, r, m); !bytes.Equal(got, data) {
				t.Fatal("incremental restore differs from the volume")
			}
			// The volume grows: its old partial last chunk and the new
			// ones are read even though no extent names them.
			grown := append(data, randomData(9, 2*testChunk)...)
			m2, err := dataplane.Backup(ctx, r, bytes.NewReader(grown), int64(len(grown)), dataplane.BackupOptions{
				VolumeID: "v", Parent: m, Changed: []dataplane.Extent{},
			})
			if err != nil {
				t.Fatal(err)
			}
			if m2.Stats.ChunksRead != 3 {
				t.Fatalf("grown volume: read %d chunks, want 3", m2.Stats.ChunksRead)
			}
			if got := restoreBytes(t, r, m2); !bytes.Equal(got, grown) {
				t.Fatal("grown volume restore differs")
			}
			// Extents outside the volume are refused.
			_, err = dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{
				Parent: parent, Changed: []dataplane.Extent{{Offset: int64(len(data)), Length: 1}},
			})
			if err == nil || !strings.Contains(err.Error(), "outside") {
				t.Fatalf("extent past the end: got %v", err)
			}
			// A parent deleted (and so perhaps collected) before the
			// backup announced itself is refused: its chunks are reused
			// unread.
			if err := r.DeleteManifest(ctx, m2.ID); err != nil {
				t.Fatal(err)
			}
			_, err = dataplane.Backup(ctx, r, bytes.NewReader(grown), int64(len(grown)), dataplane.BackupOptions{
				VolumeID: "v", Parent: m2, Changed: []dataplane.Extent{},
			})
			if err == nil || !strings.Contains(err.Error(), "parent backup "+m2.ID+" was deleted") {
				t.Fatalf("deleted parent: got %v", err)
			}
		})
	}
}

type failingReader struct {
	r      io.ReaderAt
	failAt int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.failAt {
		return 0, errors.New("medium error")
	}
	return f.r.ReadAt(p, off)
}

func TestBackupFailuresLeaveNoManifest(t *testing.T) {
	ctx := context.Background()
	data := image(3, 64*testChunk)

	t.Run("read error", func(t *testing.T) {
		r, _ := repoKinds[1].open(t)
		_, err := dataplane.Backup(ctx, r, failingReader{bytes.NewReader(data), 40 * testChunk}, int64(len(data)), dataplane.BackupOptions{VolumeID: "vol-x", Parallelism: 4})
		if err == nil || !strings.Contains(err.Error(), "medium error") || !strings.Contains(err.Error(), "vol-x") {
			t.Fatalf("got %v, want the read error naming the volume", err)
		}
		assertNoBackups(t, r)
	})
	t.Run("put error", func(t *testing.T) {
		fs := faulty.New(mem.New())
		r, err := chunkstore.Init(ctx, fs, chunkstore.InitOptions{ChunkSize: testChunk})
		if err != nil {
			t.Fatal(err)
		}
		fs.FailPutAfter = fs.Puts() + 5
		_, err = dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{Parallelism: 4})
		if !errors.Is(err, faulty.ErrInjected) || !strings.Contains(err.Error(), "chunk ") {
			t.Fatalf("got %v, want the injected error naming the chunk", err)
		}
		// The first error cancels the rest: far fewer puts than chunks.
		if fs.Puts() > 5+1+4+4 {
			t.Fatalf("%d puts after the first failure; workers were not cancelled", fs.Puts())
		}
		assertNoBackups(t, r)
	})
	t.Run("cancel", func(t *testing.T) {
		r, _ := repoKinds[0].open(t)
		cctx, cancel := context.WithCancel(ctx)
		var p dataplane.Progress
		slow := slowReader{r: bytes.NewReader(data), after: func() {
			if p.Done() > 10*testChunk {
				cancel()
			}
		}}
		_, err := dataplane.Backup(cctx, r, slow, int64(len(data)), dataplane.BackupOptions{Parallelism: 2, Progress: &p})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		assertNoBackups(t, r)
	})
}

type slowReader struct {
	r     io.ReaderAt
	after func()
}

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	s.after()
	return s.r.ReadAt(p, off)
}

func assertNoBackups(t *testing.T, r *chunkstore.Repository) {
	t.Helper()
	ids, err := r.ListBackups(context.Background())
	if err != nil || len(ids) != 0 {
		t.Fatalf("backups after a failed backup: %v (%v), want none", ids, err)
	}
}

func TestRestoreRefusesCorruptChunk(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	r, _ := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: testChunk})
	data := image(4, 12*testChunk)
	m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := m.Chunks[5]
	if err := s.Corrupt("chunks/"+bad.String()[:2]+"/"+bad.String(), 100); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "out.raw")
	_, err = dataplane.Restore(ctx, r, m, target, dataplane.RestoreOptions{})
	var ce *chunkstore.CorruptChunkError
	if !errors.As(err, &ce) || ce.Key != bad || !strings.Contains(err.Error(), m.ID) {
		t.Fatalf("got %v, want a corrupt-chunk error naming chunk %s and backup %s", err, bad, m.ID)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed restore left %s behind (%v)", target, err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".*"))
	if len(left) != 0 {
		t.Fatalf("a failed restore left temporary files: %v", left)
	}
	rep, err := r.Verify(ctx, nil, chunkstore.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.Bad) != 1 || rep.Bad[0].Key != bad || rep.BadBackups[0] != m.ID {
		t.Fatalf("verify report: %+v", rep)
	}
}

func TestRestoreTargets(t *testing.T) {
	ctx := context.Background()
	r, _ := repoKinds[0].open(t)
	data := image(5, 9*testChunk+1)
	m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "exists.raw")
	os.WriteFile(target, []byte("precious"), 0o644)
	if _, err := dataplane.Restore(ctx, r, m, target, dataplane.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("restore over an existing file without Force: got %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "precious" {
		t.Fatal("refused restore changed the target")
	}
	st, err := dataplane.Restore(ctx, r, m, target, dataplane.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); !bytes.Equal(b, data) || !st.Verified || st.ChunksZero != 2 {
		t.Fatalf("forced restore: verified=%v zero=%d, equal=%v", st.Verified, st.ChunksZero, bytes.Equal(b, data))
	}
	// Zero chunks are holes.
	var sys = fileBlocks(t, target)
	if sys*512 >= int64(len(data)) {
		t.Fatalf("restored file uses %d bytes on disk for %d bytes with 2 zero chunks: not sparse", sys*512, len(data))
	}
}
