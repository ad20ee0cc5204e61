package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/retry"
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
		{"CancelLongPut", testCancelLongPut},
		{"PutIfAbsent", testPutIfAbsent},
		{"GetBuffer", testGetBuffer},
		{"RetriesTransientErrors", testRetriesTransient},
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

// testCancelLongPut cancels a large Put while it runs: it must return
// soon, with the cancellation, and leave the object whole or absent.
func testCancelLongPut(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	data := payload(99, 64<<20)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Put(ctx, "long/object", data) }()
	time.Sleep(time.Millisecond) // let the Put get under way
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled Put of 64 MiB did not return within 30 s")
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: got %v, want nil (it finished first) or context.Canceled", err)
	}
	if serr := s.Sync(context.Background()); serr != nil {
		t.Fatalf("Sync after a cancelled Put: %v", serr)
	}
	got, gerr := s.Get(context.Background(), "long/object")
	switch {
	case errors.Is(gerr, chunkstore.ErrNotFound):
		if err == nil {
			t.Fatal("a Put that succeeded left no object")
		}
	case gerr != nil:
		t.Fatalf("Get after a cancelled Put: %v", gerr)
	case !bytes.Equal(got, data):
		t.Fatalf("a cancelled Put left a partial object (%d of %d bytes)", len(got), len(data))
	}
}

// testPutIfAbsent checks conditional creation where the store offers it:
// the first create wins, later ones see ErrExists and change nothing, and
// of writers racing on one name exactly one succeeds.
func testPutIfAbsent(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	c, ok := s.(chunkstore.Creator)
	ctx := context.Background()
	if ok {
		if err := c.PutIfAbsent(ctx, "cr/probe", []byte("x")); errors.Is(err, errors.ErrUnsupported) {
			ok = false
		} else if err != nil {
			t.Fatalf("PutIfAbsent on a free name: %v", err)
		}
	}
	if !ok {
		t.Logf("%s has no conditional create (not a chunkstore.Creator)", s.Location())
		return
	}
	if err := c.PutIfAbsent(ctx, "cr/probe", []byte("y")); !errors.Is(err, chunkstore.ErrExists) {
		t.Fatalf("PutIfAbsent on a taken name: got %v, want ErrExists", err)
	}
	mustGet(t, s, "cr/probe", []byte("x"))
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.PutIfAbsent(ctx, "cr/race", []byte(fmt.Sprint(i)))
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, chunkstore.ErrExists):
				t.Errorf("racing PutIfAbsent: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d of 8 racing writers created the same name, want exactly 1", wins.Load())
	}
}

// testGetBuffer checks reads into the caller's buffer where the store
// offers them: an object that fits comes back in the buffer's storage,
// one that does not in new storage, both whole; a missing one is
// ErrNotFound.
func testGetBuffer(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	g, ok := s.(chunkstore.BufferGetter)
	if !ok {
		t.Logf("%s reads into no caller's buffer (not a chunkstore.BufferGetter)", s.Location())
		return
	}
	ctx := context.Background()
	data := payload(11, 1<<20+5)
	mustPut(t, s, "gb/obj", data)
	buf := make([]byte, 3, len(data)+100)
	got, err := g.GetBuffer(ctx, "gb/obj", buf)
	if err != nil {
		t.Fatalf("GetBuffer into a buffer that fits: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("GetBuffer into a buffer that fits: %d bytes, not what was put", len(got))
	}
	if &got[0] != &buf[:1][0] {
		t.Fatal("GetBuffer into a buffer that fits returned other storage")
	}
	small := make([]byte, 0, len(data)-1)
	got, err = g.GetBuffer(ctx, "gb/obj", small)
	if err != nil {
		t.Fatalf("GetBuffer into a buffer too small: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("GetBuffer into a buffer too small: %d bytes, not what was put", len(got))
	}
	got, err = g.GetBuffer(ctx, "gb/obj", nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetBuffer with no buffer: %d bytes, %v", len(got), err)
	}
	if _, err := g.GetBuffer(ctx, "gb/missing", buf); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("GetBuffer of a missing object: got %v, want ErrNotFound", err)
	}
}

// flaky fails the first attempt at every call with a transient error.
type flaky struct {
	chunkstore.Store
	mu    sync.Mutex
	tried map[string]bool
	calls atomic.Int32
}

func (f *flaky) first(op, name string) error {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tried[op+name] {
		return nil
	}
	f.tried[op+name] = true
	return chunkstore.Transient(fmt.Errorf("%s %s: injected connection reset", op, name))
}

func (f *flaky) Put(ctx context.Context, name string, data []byte) error {
	if err := f.first("put", name); err != nil {
		return err
	}
	return f.Store.Put(ctx, name, data)
}

func (f *flaky) Get(ctx context.Context, name string) ([]byte, error) {
	if err := f.first("get", name); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, name)
}

func (f *flaky) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	if err := f.first("stat", name); err != nil {
		return chunkstore.Info{}, err
	}
	return f.Store.Stat(ctx, name)
}

func (f *flaky) Delete(ctx context.Context, name string) error {
	if err := f.first("delete", name); err != nil {
		return err
	}
	return f.Store.Delete(ctx, name)
}

// testRetriesTransientErrors runs the driver behind package retry with a
// transient failure on the first attempt of every call: each call
// succeeds, while a permanent error (not found) is answered at once.
func testRetriesTransient(t *testing.T, s chunkstore.Store, _ func() chunkstore.Store) {
	f := &flaky{Store: s, tried: map[string]bool{}}
	var retries atomic.Int32
	r := retry.New(f, retry.Options{Base: time.Millisecond, OnRetry: func(string, string, int, error) { retries.Add(1) }})
	ctx := context.Background()
	data := payload(7, 100<<10)
	if err := r.Put(ctx, "rt/a", data); err != nil {
		t.Fatalf("Put through retries: %v", err)
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mustGet(t, r, "rt/a", data)
	if info, err := r.Stat(ctx, "rt/a"); err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Stat through retries: %+v %v", info, err)
	}
	if err := r.Delete(ctx, "rt/a"); err != nil {
		t.Fatalf("Delete through retries: %v", err)
	}
	if retries.Load() != 4 {
		t.Errorf("%d retries for 4 calls failing once each, want 4", retries.Load())
	}
	before := f.calls.Load()
	f.tried["get"+"rt/missing"] = true // no injected failure: the real answer
	if _, err := r.Get(ctx, "rt/missing"); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("Get of a missing object: %v, want ErrNotFound", err)
	}
	if n := f.calls.Load() - before; n != 1 {
		t.Errorf("a permanent error was tried %d times, want 1", n)
	}
}
