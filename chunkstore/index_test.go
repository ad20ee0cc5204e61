package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/chunkstore/storetest"
)

// opCounter counts a store's requests by kind and name prefix, e.g.
// "get manifests/", "list index/".
type opCounter struct {
	chunkstore.Store
	mu sync.Mutex
	n  map[string]int
}

func newOpCounter(s chunkstore.Store) *opCounter { return &opCounter{Store: s, n: map[string]int{}} }

func (c *opCounter) note(op, name string) {
	prefix, _, _ := strings.Cut(name, "/")
	c.mu.Lock()
	c.n[op+" "+prefix+"/"]++
	c.mu.Unlock()
}

func (c *opCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

func (c *opCounter) Put(ctx context.Context, name string, b []byte) error {
	c.note("put", name)
	return c.Store.Put(ctx, name, b)
}

func (c *opCounter) PutIfAbsent(ctx context.Context, name string, b []byte) error {
	c.note("put", name)
	return c.Store.(chunkstore.Creator).PutIfAbsent(ctx, name, b)
}

func (c *opCounter) Get(ctx context.Context, name string) ([]byte, error) {
	c.note("get", name)
	return c.Store.Get(ctx, name)
}

func (c *opCounter) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	c.note("list", prefix)
	return c.Store.List(ctx, prefix, fn)
}

func (c *opCounter) Delete(ctx context.Context, name string) error {
	c.note("delete", name)
	return c.Store.Delete(ctx, name)
}

// manyBackups saves n manifests of 256-chunk volumes.
func manyBackups(t testing.TB, r *chunkstore.Repository, n int) []string {
	t.Helper()
	return storetest.SaveManifests(t, r, n, 10)
}

// TestListingUsesTheIndex: listing 10,000 backups reads every manifest
// once, writes the index, and from then on costs one listing of the
// manifests, one of the index and one read, plus a read per backup made
// since; deleted backups leave the listing; a torn index is ignored and
// replaced.
func TestListingUsesTheIndex(t *testing.T) {
	ctx := context.Background()
	store := newOpCounter(mem.New())
	r, err := chunkstore.Init(ctx, store, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10_000
	ids := manyBackups(t, r, n)
	store.take()

	ms, bad, st, err := r.Summaries(ctx, true)
	if err != nil || len(bad) > 0 || len(ms) != n {
		t.Fatalf("first listing: %d summaries, %d bad, %v", len(ms), len(bad), err)
	}
	if ops := store.take(); st.Read != n || !st.IndexWritten || ops["get manifests/"] != n || ops["put index/"] != 1 {
		t.Fatalf("first listing: %+v, requests %v; want every manifest read and an index written", st, ops)
	}
	for _, m := range ms {
		if m.Chunks != nil || m.Size != 256<<20 || !strings.HasPrefix(m.Meta["name"], "backup-") {
			t.Fatalf("summary %+v", m)
		}
	}
	ms, _, st, err = r.Summaries(ctx, true)
	ops := store.take()
	if err != nil || len(ms) != n || st.Read != 0 || st.FromIndex != n || st.IndexWritten {
		t.Fatalf("second listing: %d summaries, %+v, %v", len(ms), st, err)
	}
	if want := map[string]int{"list manifests/": 1, "list index/": 1, "get index/": 1}; fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Fatalf("second listing of %d backups made requests %v, want %v", n, ops, want)
	}
	t.Logf("listing %d backups: %v", n, ops)

	// Three new, two deleted: three manifest reads, the deleted ones gone.
	fresh := manyBackups(t, r, 3)
	for _, id := range ids[:2] {
		if err := r.DeleteManifest(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	store.take()
	ms, _, st, err = r.Summaries(ctx, true)
	if ops := store.take(); err != nil || len(ms) != n+1 || st.Read != 3 || ops["get manifests/"] != 3 {
		t.Fatalf("after 3 new and 2 deleted: %d summaries, %+v, %v, %v", len(ms), st, ops, err)
	}
	got := map[string]bool{}
	for _, m := range ms {
		got[m.ID] = true
	}
	if got[ids[0]] || got[ids[1]] || !got[fresh[0]] || !got[fresh[2]] {
		t.Fatal("the listing holds a deleted backup or lacks a new one")
	}

	// A torn index is passed over: every manifest is read, a new index
	// replaces it.
	var idx string
	_ = store.Store.List(ctx, "index/", func(i chunkstore.Info) error { idx = i.Name; return nil })
	b, _ := store.Store.Get(ctx, idx)
	if err := store.Store.Put(ctx, idx, b[:len(b)/2]); err != nil {
		t.Fatal(err)
	}
	ms, _, st, err = r.Summaries(ctx, true)
	if err != nil || len(ms) != n+1 || st.Read != n+1 || !st.IndexWritten {
		t.Fatalf("with a torn index: %d summaries, %+v, %v", len(ms), st, err)
	}
	names := 0
	_ = store.Store.List(ctx, "index/", func(chunkstore.Info) error { names++; return nil })
	if names != 1 {
		t.Fatalf("%d index objects, want the new one only", names)
	}
}

// TestGCWritesTheIndex: a collection reads every manifest, so it leaves
// an index behind, and the next listing reads no manifest.
func TestGCWritesTheIndex(t *testing.T) {
	ctx := context.Background()
	store := newOpCounter(mem.New())
	r, err := chunkstore.Init(ctx, store, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	manyBackups(t, r, 200)
	rep, err := r.GC(ctx, chunkstore.GCOptions{})
	if err != nil || !rep.IndexWritten || rep.Manifests != 200 {
		t.Fatalf("gc: %+v, %v", rep, err)
	}
	store.take()
	ms, _, st, err := r.Summaries(ctx, false)
	if err != nil || len(ms) != 200 || st.Read != 0 {
		t.Fatalf("listing after gc: %d, %+v, %v", len(ms), st, err)
	}
}

// failingGets fails every manifest read after the first few.
type failingGets struct {
	chunkstore.Store
	mu   sync.Mutex
	left int
}

func (s *failingGets) Get(ctx context.Context, name string) ([]byte, error) {
	if strings.HasPrefix(name, "manifests/") {
		s.mu.Lock()
		s.left--
		left := s.left
		s.mu.Unlock()
		if left < 0 {
			return nil, fmt.Errorf("%s: %w", name, chunkstore.Transient(errors.New("connection reset")))
		}
	}
	return s.Store.Get(ctx, name)
}

// TestManifestReadFailure: a store that fails midway fails the listing and
// the collection with its error, promptly, whatever is in flight.
func TestManifestReadFailure(t *testing.T) {
	ctx := context.Background()
	st := &failingGets{Store: mem.New(), left: 1 << 30}
	r, err := chunkstore.Init(ctx, st, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	manyBackups(t, r, 500)
	for _, run := range []func() error{
		func() error { _, _, _, err := r.Summaries(ctx, true); return err },
		func() error { _, err := r.GC(ctx, chunkstore.GCOptions{}); return err },
	} {
		st.left = 40
		done := make(chan error, 1)
		go func() { done <- run() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "connection reset") {
				t.Fatalf("with reads failing: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a failing read left the reading hung")
		}
	}
}

// TestSummariesOfAListing: summaries of an earlier listing list nothing
// again (an import lists its backups, then needs their summaries), and
// leave out a backup deleted since.
func TestSummariesOfAListing(t *testing.T) {
	ctx := context.Background()
	store := newOpCounter(mem.New())
	r, err := chunkstore.Init(ctx, store, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ids := manyBackups(t, r, 100)
	store.take()
	l, err := r.ListManifests(ctx)
	if err != nil || len(l.IDs) != 100 {
		t.Fatalf("listing: %v, %v", l, err)
	}
	if ops := store.take(); ops["list manifests/"] != 1 {
		t.Fatalf("listing made requests %v", ops)
	}
	if err := r.DeleteManifest(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	store.take()
	ms, bad, st, err := r.SummariesOf(ctx, l, false)
	ops := store.take()
	if err != nil || len(bad) > 0 || len(ms) != 99 || st.Read != 99 {
		t.Fatalf("summaries: %d, bad %v, %+v, %v", len(ms), bad, st, err)
	}
	if ops["list manifests/"] != 0 {
		t.Errorf("summaries of a listing listed the manifests again: %v", ops)
	}
	for _, m := range ms {
		if m.ID == ids[0] {
			t.Error("a backup deleted after the listing is in the summaries")
		}
	}
}
