package dataplane_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

// countingStore counts Gets, to see read-ahead and cache hits.
type countingStore struct {
	chunkstore.Store
	mu   sync.Mutex
	gets int
}

func (c *countingStore) Get(ctx context.Context, name string) ([]byte, error) {
	c.mu.Lock()
	c.gets++
	c.mu.Unlock()
	return c.Store.Get(ctx, name)
}

func (c *countingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets
}

func TestImageReads(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	cs := &countingStore{Store: inner}
	r, err := chunkstore.Init(ctx, cs, chunkstore.InitOptions{ChunkSize: testChunk})
	if err != nil {
		t.Fatal(err)
	}
	data := image(7, 40*testChunk+1234)
	m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{VolumeID: "v"})
	if err != nil {
		t.Fatal(err)
	}
	im := dataplane.OpenImage(r, m, dataplane.ImageOptions{CacheChunks: 8, ReadAhead: 4})
	defer im.Close()

	// Random reads of any size and alignment return the volume's bytes.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		off := rng.Int64N(int64(len(data)))
		n := rng.Int64N(min(int64(len(data))-off, 3*testChunk)) + 1
		p := make([]byte, n)
		if err := im.ReadAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, data[off:off+n]) {
			t.Fatalf("read %d at %d differs", n, off)
		}
	}
	// Slice gives the same bytes without a copy inside one chunk, and
	// declines ranges that cross chunks.
	for range 100 {
		off := rng.Int64N(int64(len(data)) - 1)
		n := int(rng.Int64N(min(int64(len(data))-off, testChunk)) + 1)
		got, ok, err := im.Slice(ctx, off, n)
		if err != nil {
			t.Fatal(err)
		}
		crosses := off/testChunk != (off+int64(n)-1)/testChunk
		if ok == crosses {
			t.Fatalf("Slice(%d, %d): ok=%v, crosses a chunk=%v", off, n, ok, crosses)
		}
		if ok && !bytes.Equal(got, data[off:off+int64(n)]) {
			t.Fatalf("Slice(%d, %d) differs", off, n)
		}
	}

	// Concurrent readers see the same.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 100000)
			for off := int64(g * 777); off+int64(len(p)) <= int64(len(data)); off += 1 << 20 {
				if err := im.ReadAt(ctx, p, off); err != nil || !bytes.Equal(p, data[off:off+int64(len(p))]) {
					t.Errorf("concurrent read at %d: %v", off, err)
					return
				}
			}
		}()
	}
	wg.Wait()

	// A sequential reader in small pieces: every stored chunk is fetched
	// once (read-ahead fills the cache ahead of it), zero chunks never.
	// (First stop the other image's read-ahead, which would count.)
	im.Close()
	im2 := dataplane.OpenImage(r, m, dataplane.ImageOptions{CacheChunks: 8, ReadAhead: 4})
	defer im2.Close()
	before := cs.count()
	p := make([]byte, 64<<10)
	for off := int64(0); off < int64(len(data)); off += int64(len(p)) {
		q := p[:min(int64(len(p)), int64(len(data))-off)]
		if err := im2.ReadAt(ctx, q, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(q, data[off:off+int64(len(q))]) {
			t.Fatalf("sequential read at %d differs", off)
		}
	}
	stored := 0
	for _, k := range m.Chunks {
		if !k.IsZero() {
			stored++
		}
	}
	if got := cs.count() - before; got != stored {
		t.Errorf("sequential read fetched %d chunks, want each of the %d stored chunks once", got, stored)
	}

	// Out of range is an error, not a short read.
	if err := im.ReadAt(ctx, make([]byte, 10), int64(len(data))-5); err == nil {
		t.Error("read past the end accepted")
	}

	// Extents: zero chunks are holes.
	var holes, total int64
	im.Extents(0, int64(len(data)), func(l int64, zero bool) bool {
		if zero {
			holes += l
		}
		total += l
		return true
	})
	if total != int64(len(data)) || holes != 10*testChunk {
		t.Errorf("extents: %d bytes, %d of holes; want %d and %d", total, holes, len(data), 10*testChunk)
	}

	// A corrupt chunk is an error naming the backup, never wrong data.
	var victim string
	_ = inner.List(ctx, "chunks/", func(i chunkstore.Info) error { victim = i.Name; return nil })
	_ = inner.Corrupt(victim, 100)
	im3 := dataplane.OpenImage(r, m, dataplane.ImageOptions{ReadAhead: -1})
	defer im3.Close()
	var sawErr bool
	for off := int64(0); off < int64(len(data)); off += testChunk {
		err := im3.ReadAt(ctx, make([]byte, min(testChunk, int64(len(data))-off)), off)
		if err != nil {
			sawErr = true
			if !strings.Contains(err.Error(), m.ID) {
				t.Errorf("corrupt chunk error does not name the backup: %v", err)
			}
		}
	}
	if !sawErr {
		t.Error("corrupt chunk read without error")
	}
}
