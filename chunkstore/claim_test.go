package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
)

// checkThenPut is an engine whose conditional put checks, then writes, in
// two steps (the fault of seaweedfs/seaweedfs#8800): racing writers are
// all told they created the name, and the last one's data stays.
type checkThenPut struct{ *mem.Store }

func (s checkThenPut) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	if _, err := s.Stat(ctx, name); err == nil {
		return chunkstore.ErrExists
	}
	time.Sleep(2 * time.Millisecond)
	return s.Put(ctx, name, data)
}

// race runs n writers of one name at once; it returns the indexes of
// those told they created it.
func race(t *testing.T, n int, create func(i int) error) []int {
	t.Helper()
	var mu sync.Mutex
	var won []int
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := create(i)
			switch {
			case err == nil:
				mu.Lock()
				won = append(won, i)
				mu.Unlock()
			case !errors.Is(err, chunkstore.ErrExists):
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	return won
}

// TestClaimCreateRace: 8 writers racing on one name over an engine whose
// conditional put is not atomic. Trusting it, several believe they created
// the name; through ClaimCreate exactly one does, and its data is what
// the name holds.
func TestClaimCreateRace(t *testing.T) {
	ctx := context.Background()
	st := checkThenPut{mem.New()}
	several := 0
	for r := range 10 {
		name := fmt.Sprintf("manifests/trusting-%d", r)
		if won := race(t, 8, func(i int) error { return st.PutIfAbsent(ctx, name, []byte(strconv.Itoa(i))) }); len(won) > 1 {
			several++
		}
	}
	if several == 0 {
		t.Fatal("the emulated engine never let two writers win: the test would prove nothing")
	}
	t.Logf("trusting the engine: %d of 10 rounds had several winners", several)
	for r := range 30 {
		name := fmt.Sprintf("manifests/claimed-%d", r)
		won := race(t, 8, func(i int) error {
			return chunkstore.ClaimCreate(ctx, st, name, func(ctx context.Context) error {
				return st.PutIfAbsent(ctx, name, []byte(strconv.Itoa(i)))
			})
		})
		if len(won) != 1 {
			t.Fatalf("round %d: %d writers believe they created %s, want 1", r, len(won), name)
		}
		if got, err := st.Get(ctx, name); err != nil || string(got) != strconv.Itoa(won[0]) {
			t.Fatalf("round %d: %s holds %q (%v), the winner wrote %d", r, name, got, err, won[0])
		}
	}
	n := 0
	_ = st.List(ctx, "claims/", func(chunkstore.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d claims left behind", n)
	}
	// Sequentially the name is taken.
	err := chunkstore.ClaimCreate(ctx, st, "manifests/claimed-0", func(context.Context) error { t.Fatal("created twice"); return nil })
	if !errors.Is(err, chunkstore.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
}

// TestClaimStaleAndContended: a claim of a writer that died holds nobody
// back once stale, and GC removes it; a live one makes a writer give up
// with a transient error, never create.
func TestClaimStaleAndContended(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	old := time.Now().Add(-chunkstore.ClaimStale - time.Minute).UnixNano()
	if err := st.Put(ctx, fmt.Sprintf("%s%d-dead", chunkstore.ClaimsOf("config"), old), nil); err != nil {
		t.Fatal(err)
	}
	created := false
	if err := chunkstore.ClaimCreate(ctx, st, "config", func(context.Context) error { created = true; return st.Put(ctx, "config", []byte("x")) }); err != nil || !created {
		t.Fatalf("create beside a stale claim: %v (created %v)", err, created)
	}
	live := fmt.Sprintf("%s%d-alive", chunkstore.ClaimsOf("manifests/b"), time.Now().UnixNano())
	if err := st.Put(ctx, live, nil); err != nil {
		t.Fatal(err)
	}
	defer chunkstore.ShortClaimPauses()()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := chunkstore.ClaimCreate(cctx, st, "manifests/b", func(context.Context) error { t.Fatal("created under a live claim"); return nil })
	if !errors.Is(err, chunkstore.ErrContended) || !chunkstore.IsTransient(err) {
		t.Fatalf("create under a live claim: %v, want a transient ErrContended", err)
	}
	n, err := chunkstore.RemoveStaleClaims(ctx, st)
	if err != nil || n != 1 {
		t.Fatalf("RemoveStaleClaims: %d, %v; want the dead writer's claim only", n, err)
	}
	if _, err := st.Stat(ctx, live); err != nil {
		t.Fatalf("the live claim was removed: %v", err)
	}
}

// forgetful lists nothing: a store without the consistency claims need.
type forgetful struct{ *mem.Store }

func (forgetful) List(context.Context, string, func(chunkstore.Info) error) error { return nil }

func TestClaimNeedsConsistentListing(t *testing.T) {
	ctx := context.Background()
	st := forgetful{mem.New()}
	err := chunkstore.ClaimCreate(ctx, st, "config", func(context.Context) error { t.Fatal("created blind"); return nil })
	if err == nil || errors.Is(err, chunkstore.ErrExists) {
		t.Fatalf("create on a store that does not list its own claim: %v, want a refusal", err)
	}
	n := 0
	_ = st.Store.List(ctx, "claims/", func(chunkstore.Info) error { n++; return nil })
	if n != 0 {
		t.Fatal("the claim was left behind")
	}
}
