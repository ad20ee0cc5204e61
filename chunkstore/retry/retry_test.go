package retry_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/chunkstore/retry"
	"github.com/volback/volback/chunkstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		s := retry.New(mem.New(), retry.Options{})
		return s, func() chunkstore.Store { return s }
	})
}

// failing fails every call with err, counting them.
type failing struct {
	chunkstore.Store
	err   error
	calls atomic.Int32
	// listed, if set, is handed to List's callback before it fails.
	listed []chunkstore.Info
}

func (f *failing) Put(context.Context, string, []byte) error {
	f.calls.Add(1)
	return f.err
}

func (f *failing) List(_ context.Context, _ string, fn func(chunkstore.Info) error) error {
	f.calls.Add(1)
	for _, i := range f.listed {
		if err := fn(i); err != nil {
			return err
		}
	}
	return f.err
}

func TestGivesUpAfterAttempts(t *testing.T) {
	f := &failing{Store: mem.New(), err: chunkstore.Transient(errors.New("connection reset"))}
	r := retry.New(f, retry.Options{Attempts: 3, Base: time.Millisecond})
	err := r.Put(context.Background(), "x", []byte("x"))
	if !chunkstore.IsTransient(err) || f.calls.Load() != 3 {
		t.Fatalf("after 3 transient failures: %v (transient %v), %d calls; want a transient error after 3", err, chunkstore.IsTransient(err), f.calls.Load())
	}
}

func TestPermanentNotRetried(t *testing.T) {
	f := &failing{Store: mem.New(), err: errors.New("no space left on device")}
	r := retry.New(f, retry.Options{Base: time.Millisecond})
	if err := r.Put(context.Background(), "x", []byte("x")); err == nil || f.calls.Load() != 1 {
		t.Fatalf("permanent error: %v after %d calls, want it after 1", err, f.calls.Load())
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	f := &failing{Store: mem.New(), err: chunkstore.Transient(errors.New("throttled"))}
	r := retry.New(f, retry.Options{Attempts: 100, Base: time.Hour, Max: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Put(ctx, "x", []byte("x")) }()
	for f.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled during backoff: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled call kept waiting out its backoff")
	}
}

// A listing that has handed out entries is not retried: the callback
// would see them twice.
func TestListNotRetriedAfterEntries(t *testing.T) {
	f := &failing{Store: mem.New(), err: chunkstore.Transient(errors.New("reset")), listed: []chunkstore.Info{{Name: "a"}}}
	r := retry.New(f, retry.Options{Base: time.Millisecond})
	seen := 0
	err := r.List(context.Background(), "", func(chunkstore.Info) error { seen++; return nil })
	if err == nil || seen != 1 || f.calls.Load() != 1 {
		t.Fatalf("list failing after one entry: %v, %d entries seen, %d calls; want the error, 1, 1", err, seen, f.calls.Load())
	}
	f.listed = nil
	f.calls.Store(0)
	if err := r.List(context.Background(), "", func(chunkstore.Info) error { return nil }); err == nil || f.calls.Load() != 3 {
		t.Fatalf("list failing before any entry: %v after %d calls, want 3 attempts", err, f.calls.Load())
	}
}

// lostReply creates the object, then reports a transient failure, as a
// connection cut after the server acted does.
type lostReply struct {
	*mem.Store
	once atomic.Bool
}

func (l *lostReply) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	err := l.Store.PutIfAbsent(ctx, name, data)
	if err == nil && l.once.CompareAndSwap(false, true) {
		return chunkstore.Transient(fmt.Errorf("create %s: connection reset after the request", name))
	}
	return err
}

func TestPutIfAbsentAfterLostReply(t *testing.T) {
	ctx := context.Background()
	l := &lostReply{Store: mem.New()}
	r := retry.New(l, retry.Options{Base: time.Millisecond})
	if err := r.PutIfAbsent(ctx, "manifests/x", []byte("mine")); err != nil {
		t.Fatalf("a create whose reply was lost: %v, want success (the object holds our bytes)", err)
	}
	if err := r.PutIfAbsent(ctx, "manifests/x", []byte("other")); !errors.Is(err, chunkstore.ErrExists) {
		t.Fatalf("a second create: %v, want ErrExists", err)
	}
}
