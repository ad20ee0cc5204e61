package chunkstore_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/faulty"
	"github.com/volback/volback/chunkstore/mem"
)

func memRepo(t *testing.T, s chunkstore.Store) *chunkstore.Repository {
	t.Helper()
	r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func chunksOf(seed byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte(fmt.Sprintf("%c%04d", 'a'+seed, i)), (64<<10)/5+1)[:64<<10]
	}
	return out
}

// chunkCounter counts the chunks stored and, past failAfter, refuses more.
type chunkCounter struct {
	chunkstore.Store
	stored, failAfter atomic.Int64
}

func (c *chunkCounter) Put(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, "chunks/") {
		if f := c.failAfter.Load(); f > 0 && c.stored.Load() >= f {
			return faulty.ErrInjected
		}
		if err := c.Store.Put(ctx, name, data); err != nil {
			return err
		}
		c.stored.Add(1)
		return nil
	}
	return c.Store.Put(ctx, name, data)
}

// TestCopyBackup: a copy between repositories of different seeds restores
// the same data; a second backup sharing most chunks sends only its new
// ones; a copy killed midway and run again completes and sends no chunk
// twice; a copy already there moves nothing.
func TestCopyBackup(t *testing.T) {
	ctx := context.Background()
	src := memRepo(t, mem.New())
	dstStore := &chunkCounter{Store: mem.New()}
	dst := memRepo(t, dstStore)
	base := chunksOf(0, 10)
	first := saveBackup(t, src, append(base, make([]byte, 64<<10))...)
	m, st, err := chunkstore.CopyBackup(ctx, src, dst, first, chunkstore.CopyOptions{Parallelism: 3})
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != 10 || st.ChunksSent != 10 || st.ChunksPresent != 0 || st.BytesRead != 10*64<<10 {
		t.Fatalf("first copy: %+v", st)
	}
	for i, k := range m.Chunks[:10] {
		got, err := dst.GetChunk(ctx, k, nil)
		if err != nil || !bytes.Equal(got, base[i]) {
			t.Fatalf("chunk %d of the copy: %v", i, err)
		}
	}
	if !m.Chunks[10].IsZero() || m.Meta["copiedFrom"] == "" {
		t.Errorf("copied manifest: zero chunk %v, meta %v", m.Chunks[10], m.Meta)
	}

	// A later backup: eight chunks shared, two new.
	later := append(append([][]byte{}, base[:8]...), chunksOf(1, 2)...)
	second := saveBackup(t, src, later...)
	_, st, err = chunkstore.CopyBackup(ctx, src, dst, second, chunkstore.CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksSent != 2 || st.ChunksPresent != 8 {
		t.Fatalf("second copy sent %d chunks and found %d, want 2 and 8", st.ChunksSent, st.ChunksPresent)
	}

	// Killed midway: the destination refuses chunks after three more.
	third := saveBackup(t, src, chunksOf(2, 8)...)
	before := dstStore.stored.Load()
	dstStore.failAfter.Store(before + 3)
	if _, _, err := chunkstore.CopyBackup(ctx, src, dst, third, chunkstore.CopyOptions{Parallelism: 1}); err == nil {
		t.Fatal("a copy whose destination fails succeeded")
	}
	if ok, _ := dst.HasManifest(ctx, third); ok {
		t.Fatal("a failed copy left a manifest")
	}
	dstStore.failAfter.Store(0)
	_, st, err = chunkstore.CopyBackup(ctx, src, dst, third, chunkstore.CopyOptions{Parallelism: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Every one of the 8 chunks stored exactly once over both attempts.
	if n := dstStore.stored.Load() - before; n != 8 {
		t.Errorf("the two attempts stored %d chunks, want each of the 8 once", n)
	}
	if st.ChunksSent != 5 || st.ChunksPresent != 3 {
		t.Errorf("resumed copy: %+v, want 5 sent and 3 found", st)
	}
	_, st, err = chunkstore.CopyBackup(ctx, src, dst, third, chunkstore.CopyOptions{})
	if err != nil || !st.AlreadyCopied || st.ChunksSent != 0 {
		t.Errorf("copy of a backup already there: %+v %v", st, err)
	}

	// Another backup under a taken id is refused.
	other := memRepo(t, mem.New())
	saveBackupAs(t, other, third, chunksOf(3, 2)...)
	if _, _, err := chunkstore.CopyBackup(ctx, other, dst, third, chunkstore.CopyOptions{}); err == nil || !strings.Contains(err.Error(), "another backup") {
		t.Errorf("copy over another backup with the same id: %v", err)
	}
}

// TestCopyAcrossFormats: backups copy from a format 1 repository into a
// format 3 one and back, re-keyed each way, and every chunk of each copy
// reads back under the destination's key.
func TestCopyAcrossFormats(t *testing.T) {
	ctx := context.Background()
	old, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: 64 << 10, Format: chunkstore.FormatXXH64})
	if err != nil {
		t.Fatal(err)
	}
	cur := memRepo(t, mem.New())
	if old.Config().Version != chunkstore.FormatXXH64 || cur.Config().Version != chunkstore.FormatXXH3 {
		t.Fatalf("formats %d and %d", old.Config().Version, cur.Config().Version)
	}
	data := chunksOf(4, 6)
	for _, c := range []struct {
		name     string
		src, dst *chunkstore.Repository
	}{{"1 to 3", old, cur}, {"3 to 1", cur, old}} {
		id := saveBackup(t, c.src, data...)
		srcM, err := c.src.LoadManifest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := chunkstore.CopyBackup(ctx, c.src, c.dst, id, chunkstore.CopyOptions{})
		if err != nil {
			t.Fatalf("copy %s: %v", c.name, err)
		}
		for i, k := range m.Chunks {
			if k == srcM.Chunks[i] {
				t.Fatalf("copy %s: chunk %d kept its source key", c.name, i)
			}
			got, err := c.dst.GetChunk(ctx, k, nil)
			if err != nil || !bytes.Equal(got, data[i]) || c.dst.Key(got) != k {
				t.Fatalf("copy %s: chunk %d: %v", c.name, i, err)
			}
		}
	}
}
