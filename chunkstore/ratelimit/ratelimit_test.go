package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/chunkstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		s := New(mem.New(), 1<<30, 1<<30)
		return s, func() chunkstore.Store { return s }
	})
}

// Four writers share one limit: 2 MiB at 1 MiB/s takes about 2 s in all.
func TestSharedWriteLimit(t *testing.T) {
	s := New(mem.New(), 1<<20, 0)
	ctx := context.Background()
	// The first burst (a tenth of a second's worth) passes at once.
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				if err := s.Put(ctx, "o"+string(rune('a'+w))+string(rune('a'+i)), make([]byte, 64<<10)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if d < 1800*time.Millisecond || d > 3*time.Second {
		t.Fatalf("2 MiB at 1 MiB/s took %s, want about 1.9 s", d)
	}
	if _, err := s.Get(ctx, "oaa"); err != nil {
		t.Fatalf("unlimited reads: %v", err)
	}
}

func TestWaitHonoursCancellation(t *testing.T) {
	s := New(mem.New(), 1024, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := s.Put(ctx, "big", make([]byte, 1<<20))
	if err == nil || (!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && err.Error() == "") {
		t.Fatalf("got %v, want the wait to give up", err)
	}
	if _, gerr := s.Get(context.Background(), "big"); !errors.Is(gerr, chunkstore.ErrNotFound) {
		t.Fatalf("a refused put stored the object: %v", gerr)
	}
}
