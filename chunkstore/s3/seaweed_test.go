package s3_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/volback/volback/bench/peer"
	"github.com/volback/volback/chunkstore"
	s3store "github.com/volback/volback/chunkstore/s3"
	"github.com/volback/volback/chunkstore/storetest"
)

func openWeed(t testing.TB, c *peer.SeaweedFS, bucket, prefix string, mod ...func(*s3store.Options)) *s3store.Store {
	t.Helper()
	return openAt(t, c.Endpoint, c.AccessKey, c.SecretKey, bucket, prefix, mod...)
}

// ignoreIfNoneMatch makes the server see plain puts: an engine that
// accepts the header and does not enforce it.
func ignoreIfNoneMatch(o *s3store.Options) {
	o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
		return st.Build.Add(middleware.BuildMiddlewareFunc("IgnoreIfNoneMatch",
			func(ctx context.Context, in middleware.BuildInput, next middleware.BuildHandler) (middleware.BuildOutput, middleware.Metadata, error) {
				if r, ok := in.Request.(*smithyhttp.Request); ok {
					r.Header.Del("If-None-Match")
				}
				return next.HandleBuild(ctx, in)
			}), middleware.After)
	})
}

func conditionalOnly(o *s3store.Options) { o.ConditionalOnly = true }

// racers runs 8 writers creating one name at once, each through its own
// store (as eight hosts would); it returns who was told it created it.
func racers(t *testing.T, stores []*s3store.Store, name string) []int {
	t.Helper()
	var mu sync.Mutex
	var won []int
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := s.PutIfAbsent(context.Background(), name, []byte("writer "+strconv.Itoa(i)))
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

// TestSeaweedFSExclusiveCreate: 8 writers racing on one name on a real
// SeaweedFS cluster. The engine's own If-None-Match is measured; then an
// engine that ignores it is emulated (the header removed on the wire):
// trusting it, several writers believe they created the name; with
// claims, the default, exactly one does and the name holds its data.
func TestSeaweedFSExclusiveCreate(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c := storetest.StartSeaweedFS(t)
	if err := c.NewBucket(context.Background(), "exclusive"); err != nil {
		t.Fatal(err)
	}
	stores := func(mod ...func(*s3store.Options)) []*s3store.Store {
		s := make([]*s3store.Store, 8)
		for i := range s {
			s[i] = openWeed(t, c, "exclusive", "", mod...)
		}
		return s
	}
	t.Run("engine", func(t *testing.T) {
		st := stores(conditionalOnly)
		for r := range 2 {
			start := time.Now()
			if won := racers(t, st, fmt.Sprintf("engine/%d", r)); len(won) != 1 {
				t.Fatalf("round %d: SeaweedFS let %d of 8 conditional puts succeed", r, len(won))
			}
			t.Logf("round %d: SeaweedFS enforced If-None-Match: one of 8 created, in %v", r, time.Since(start).Round(time.Millisecond))
		}
	})
	t.Run("ignored", func(t *testing.T) {
		st := stores(conditionalOnly, ignoreIfNoneMatch)
		won := racers(t, st, "ignored/0")
		if len(won) < 2 {
			t.Fatalf("with the header ignored %d writers won: the emulation proves nothing", len(won))
		}
		t.Logf("trusting an engine that ignores If-None-Match: %d of 8 writers believe they created the name", len(won))
	})
	t.Run("claims", func(t *testing.T) {
		st := stores(ignoreIfNoneMatch)
		for r := range 5 {
			name := fmt.Sprintf("claimed/%d", r)
			start := time.Now()
			won := racers(t, st, name)
			if len(won) != 1 {
				t.Fatalf("round %d: %d writers believe they created %s, want 1", r, len(won), name)
			}
			got, err := st[0].Get(context.Background(), name)
			if err != nil || string(got) != "writer "+strconv.Itoa(won[0]) {
				t.Fatalf("round %d: %s holds %q (%v), its creator was writer %d", r, name, got, err, won[0])
			}
			t.Logf("round %d: one of 8 created, in %v", r, time.Since(start).Round(time.Millisecond))
		}
		if err := st[1].PutIfAbsent(context.Background(), "claimed/0", []byte("late")); !errors.Is(err, chunkstore.ErrExists) {
			t.Fatalf("a late create of a taken name: %v, want ErrExists", err)
		}
	})
	// The repository's config and a manifest, raced the same way.
	t.Run("repository", func(t *testing.T) {
		st := stores(ignoreIfNoneMatch)
		var wg sync.WaitGroup
		var inits, exists atomic.Int32
		for i := range st {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := chunkstore.Init(context.Background(), st[i], chunkstore.InitOptions{ChunkSize: 1 << 20})
				switch {
				case err == nil:
					inits.Add(1)
				case errors.Is(err, chunkstore.ErrRepositoryExists):
					exists.Add(1)
				default:
					t.Errorf("init %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		if inits.Load() != 1 || exists.Load() != 7 {
			t.Fatalf("8 racing inits: %d created, %d told it exists; want 1 and 7", inits.Load(), exists.Load())
		}
		var saved, taken atomic.Int32
		for i := range st {
			wg.Add(1)
			go func() {
				defer wg.Done()
				repo, err := chunkstore.Open(context.Background(), st[i])
				if err != nil {
					t.Error(err)
					return
				}
				m := &chunkstore.Manifest{Version: chunkstore.ManifestVersion, ID: "0a5e0000000000000000000000000000", VolumeID: "vol", ChunkSize: 1 << 20, Mode: chunkstore.ModeFull,
					Started: time.Now(), Finished: time.Now(), Meta: map[string]string{"writer": strconv.Itoa(i)}, Chunks: []chunkstore.Key{}}
				switch err := repo.SaveManifest(context.Background(), m); {
				case err == nil:
					saved.Add(1)
				case errors.Is(err, chunkstore.ErrBackupExists):
					taken.Add(1)
				default:
					t.Errorf("save %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		if saved.Load() != 1 || taken.Load() != 7 {
			t.Fatalf("8 racing manifests of one backup: %d saved, %d refused; want 1 and 7", saved.Load(), taken.Load())
		}
	})
}

// TestSeaweedFSConformance: the driver's guarantees on a real cluster.
func TestSeaweedFSConformance(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c := storetest.StartSeaweedFS(t)
	if err := c.NewBucket(context.Background(), "conformance"); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		prefix := fmt.Sprintf("run%d/repo", n.Add(1))
		s := openWeed(t, c, "conformance", prefix)
		return s, func() chunkstore.Store { return openWeed(t, c, "conformance", prefix) }
	})
}
