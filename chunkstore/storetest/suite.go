package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"

	"github.com/volback/volback/chunkstore"
)

// Factory returns an empty store for one subtest, and a function that opens
// a second handle on the same storage (as a restarted process would). The
// suite closes both.
type Factory func(t *testing.T) (s chunkstore.Store, reopen func() chunkstore.Store)

// Run runs every conformance test against stores made by f.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, chunkstore.Store, func() chunkstore.Store)
	}{
		{"PutGetStat", testPutGetStat},
		{"Missing", testMissing},
		{"Overwrite", testOverwrite},
		{"CallerMayReuseBuffer", testBufferReuse},
		{"LargeObject", testLarge},
		{"SyncThenReopen", testSyncReopen},
		{"List", testList},
		{"ListStopsOnError", testListStops},
		{"Delete", testDelete},
		{"InvalidNames", testInvalidNames},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Cancellation", testCancellation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, reopen := f(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s, reopen)
		})
	}
}

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustPut(t *testing.T, s chunkstore.Store, name string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), name, data); err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
}

func mustGet(t *testing.T, s chunkstore.Store, name string, want []byte) {
	t.Helper()
	got, err := s.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q): got %d bytes, want %d bytes of different content", name, len(got), len(want))
	}
}

func mustSync(t *testing.T, s chunkstore.Store) {
	t.Helper()
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func testPutGetStat(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	data := payload(1, 1000)
	mustPut(t, s, "chunks/ab/object", data)
	mustGet(t, s, "chunks/ab/object", data)
	info, err := s.Stat(context.Background(), "chunks/ab/object")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if info.Size != 1000 || info.Name != "chunks/ab/object" {
		t.Fatalf("Stat: got %+v, want size 1000 name chunks/ab/object", info)
	}
	mustPut(t, s, "empty", nil)
	mustGet(t, s, "empty", nil)
}

func testMissing(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, "nope/x"); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("Get missing: got %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "nope/x"); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("Stat missing: got %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "nope/x"); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("Delete missing: got %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "nope/x"); chunkstore.IsTransient(err) {
		t.Errorf("not-found classified as transient: %v", err)
	}
}

func testOverwrite(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	mustPut(t, s, "a/b", []byte("first"))
	mustPut(t, s, "a/b", []byte("second, longer"))
	mustGet(t, s, "a/b", []byte("second, longer"))
	mustSync(t, s)
	mustPut(t, s, "a/b", []byte("third"))
	mustGet(t, s, "a/b", []byte("third"))
	mustSync(t, s)
	mustGet(t, s, "a/b", []byte("third"))
}

func testBufferReuse(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	buf := []byte("original content")
	want := append([]byte(nil), buf...)
	mustPut(t, s, "reuse", buf)
	for i := range buf {
		buf[i] = 'x'
	}
	mustGet(t, s, "reuse", want)
	got, _ := s.Get(context.Background(), "reuse")
	got[0] = 'Z'
	mustGet(t, s, "reuse", want)
}

func testLarge(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	data := payload(7, 9<<20+17)
	mustPut(t, s, "chunks/ff/large", data)
	mustSync(t, s)
	mustGet(t, s, "chunks/ff/large", data)
}

func testSyncReopen(t *testing.T, s chunkstore.Store, reopen func() chunkstore.Store) {
	objs := map[string][]byte{}
	for i := range 20 {
		name := fmt.Sprintf("chunks/%02x/obj%d", i, i)
		objs[name] = payload(uint64(i), 100+i*37)
		mustPut(t, s, name, objs[name])
	}
	for name, data := range objs {
		mustGet(t, s, name, data) // before Sync: read-your-writes
	}
	mustSync(t, s)
	if reopen == nil {
		return
	}
	s2 := reopen()
	defer s2.Close()
	for name, data := range objs {
		mustGet(t, s2, name, data)
	}
}

func listNames(t *testing.T, s chunkstore.Store, prefix string) []string {
	t.Helper()
	var names []string
	err := s.List(context.Background(), prefix, func(info chunkstore.Info) error {
		names = append(names, info.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	sort.Strings(names)
	return names
}

func testList(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	for _, n := range []string{"chunks/aa/1", "chunks/ab/2", "chunks/ab/3", "manifests/m1", "config"} {
		mustPut(t, s, n, []byte(n))
	}
	mustSync(t, s)
	mustPut(t, s, "chunks/ac/unsynced", []byte("x"))
	cases := []struct {
		prefix string
		want   []string
	}{
		{"chunks/", []string{"chunks/aa/1", "chunks/ab/2", "chunks/ab/3", "chunks/ac/unsynced"}},
		{"chunks/ab/", []string{"chunks/ab/2", "chunks/ab/3"}},
		{"chunks/a", []string{"chunks/aa/1", "chunks/ab/2", "chunks/ab/3", "chunks/ac/unsynced"}},
		{"manifests/", []string{"manifests/m1"}},
		{"nothing/", nil},
		{"", []string{"chunks/aa/1", "chunks/ab/2", "chunks/ab/3", "chunks/ac/unsynced", "config", "manifests/m1"}},
	}
	for _, c := range cases {
		got := listNames(t, s, c.prefix)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("List(%q): got %v, want %v", c.prefix, got, c.want)
		}
	}
	var size int64 = -1
	_ = s.List(context.Background(), "manifests/", func(info chunkstore.Info) error {
		size = info.Size
		return nil
	})
	if size != int64(len("manifests/m1")) {
		t.Errorf("List size: got %d, want %d", size, len("manifests/m1"))
	}
}

func testListStops(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	for i := range 5 {
		mustPut(t, s, fmt.Sprintf("l/%d", i), []byte{1})
	}
	stop := errors.New("stop here")
	calls := 0
	err := s.List(context.Background(), "l/", func(chunkstore.Info) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("List with failing callback: got err %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func testDelete(t *testing.T, s chunkstore.Store, reopen func() chunkstore.Store) {
	mustPut(t, s, "d/synced", []byte("a"))
	mustSync(t, s)
	mustPut(t, s, "d/pending", []byte("b"))
	ctx := context.Background()
	for _, n := range []string{"d/synced", "d/pending"} {
		if err := s.Delete(ctx, n); err != nil {
			t.Fatalf("Delete(%q): %v", n, err)
		}
		if _, err := s.Get(ctx, n); !errors.Is(err, chunkstore.ErrNotFound) {
			t.Fatalf("Get after Delete(%q): got %v, want ErrNotFound", n, err)
		}
	}
	mustSync(t, s)
	if got := listNames(t, s, "d/"); len(got) != 0 {
		t.Fatalf("List after Delete: got %v, want nothing", got)
	}
	if reopen != nil {
		s2 := reopen()
		defer s2.Close()
		if got := listNames(t, s2, "d/"); len(got) != 0 {
			t.Fatalf("List after Delete and reopen: got %v, want nothing", got)
		}
	}
}

func testInvalidNames(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	for _, n := range []string{"", "/abs", "a/../b", "a//b", "a/", "./a", "..", "a\x00b", `a\b`} {
		if err := s.Put(context.Background(), n, []byte("x")); err == nil {
			t.Errorf("Put(%q) accepted an invalid name", n)
		}
		if _, err := s.Get(context.Background(), n); err == nil || errors.Is(err, chunkstore.ErrNotFound) {
			t.Errorf("Get(%q): got %v, want an invalid-name error", n, err)
		}
	}
}

func testConcurrentWriters(t *testing.T, s chunkstore.Store, reopen func() chunkstore.Store) {
	const writers, each = 8, 16
	shared := payload(99, 4096)
	var wg sync.WaitGroup
	errs := make(chan error, writers*(each+1)+writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range each {
				name := fmt.Sprintf("chunks/%02x/w%d-%d", (w*each+i)%256, w, i)
				if err := s.Put(ctx, name, payload(uint64(w*1000+i), 512+i)); err != nil {
					errs <- err
				}
			}
			// Every writer also puts the same object, as two backups
			// that share a chunk do.
			if err := s.Put(ctx, "chunks/00/shared", shared); err != nil {
				errs <- err
			}
			if err := s.Sync(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent writer: %v", err)
	}
	check := func(st chunkstore.Store) {
		for w := range writers {
			for i := range each {
				name := fmt.Sprintf("chunks/%02x/w%d-%d", (w*each+i)%256, w, i)
				mustGet(t, st, name, payload(uint64(w*1000+i), 512+i))
			}
		}
		mustGet(t, st, "chunks/00/shared", shared)
		if got := listNames(t, st, "chunks/"); len(got) != writers*each+1 {
			t.Fatalf("List after concurrent writers: got %d objects, want %d", len(got), writers*each+1)
		}
	}
	check(s)
	if reopen != nil {
		s2 := reopen()
		defer s2.Close()
		check(s2)
	}
}

func testCancellation(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	mustPut(t, s, "c/exists", []byte("x"))
	mustSync(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "c/new", []byte("y")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled ctx: got %v, want context.Canceled", err)
	}
	if _, err := s.Get(ctx, "c/exists"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with cancelled ctx: got %v, want context.Canceled", err)
	}
	if _, err := s.Stat(ctx, "c/exists"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with cancelled ctx: got %v, want context.Canceled", err)
	}
	if err := s.List(ctx, "c/", func(chunkstore.Info) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List with cancelled ctx: got %v, want context.Canceled", err)
	}
	if err := s.Delete(ctx, "c/exists"); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with cancelled ctx: got %v, want context.Canceled", err)
	}
	if err := s.Sync(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Sync with cancelled ctx: got %v, want context.Canceled", err)
	}
	if chunkstore.IsTransient(context.Canceled) {
		t.Errorf("cancellation classified as transient")
	}
	// Nothing a cancelled call touched may have changed.
	mustGet(t, s, "c/exists", []byte("x"))
	if _, err := s.Get(context.Background(), "c/new"); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("object put with cancelled ctx exists: %v", err)
	}
}
