package dataplane_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

// requestCounter counts the requests a store receives, by kind, as an S3
// bill would: LIST, HEAD (Stat), GET, PUT (Put and conditional creates),
// DELETE.
type requestCounter struct {
	chunkstore.Store
	mu sync.Mutex
	n  map[string]int
}

func (s *requestCounter) add(kind string) {
	s.mu.Lock()
	s.n[kind]++
	s.mu.Unlock()
}

func (s *requestCounter) Put(ctx context.Context, name string, b []byte) error {
	s.add("PUT")
	return s.Store.Put(ctx, name, b)
}

// PutIfAbsent is an exclusive create as the S3 driver makes it by
// default: inside a claim, then a conditional PUT.
func (s *requestCounter) PutIfAbsent(ctx context.Context, name string, b []byte) error {
	return chunkstore.ClaimCreate(ctx, s, name, func(ctx context.Context) error {
		s.add("PUT")
		return s.Store.(chunkstore.Creator).PutIfAbsent(ctx, name, b)
	})
}

func (s *requestCounter) Get(ctx context.Context, name string) ([]byte, error) {
	s.add("GET")
	return s.Store.Get(ctx, name)
}

func (s *requestCounter) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	s.add("HEAD")
	return s.Store.Stat(ctx, name)
}

func (s *requestCounter) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	s.add("LIST")
	return s.Store.List(ctx, prefix, fn)
}

func (s *requestCounter) Delete(ctx context.Context, name string) error {
	s.add("DELETE")
	return s.Store.Delete(ctx, name)
}

func (s *requestCounter) take() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.n
	s.n = map[string]int{}
	return n
}

// TestBackupRequestsStayFlat: the requests one incremental backup makes do
// not grow with the backups already in the repository: the 10th and the
// 1,000th cost the same LISTs, HEADs, GETs and PUTs.
func TestBackupRequestsStayFlat(t *testing.T) {
	ctx := context.Background()
	cs := &requestCounter{Store: mem.New(), n: map[string]int{}}
	const chunk = 64 << 10
	repo, err := chunkstore.Init(ctx, cs, chunkstore.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 16*chunk)
	var parent *chunkstore.Manifest
	costs := map[int]map[string]int{}
	for i := 1; i <= 1000; i++ {
		// One chunk changes between backups.
		c := i % 16
		copy(img[c*chunk:], bytes.Repeat([]byte(fmt.Sprintf("backup %06d ", i)), chunk/14))
		opts := dataplane.BackupOptions{VolumeID: "v", Parent: parent}
		if parent != nil {
			opts.Changed = []dataplane.Extent{{Offset: int64(c * chunk), Length: chunk}}
		}
		cs.take()
		m, err := dataplane.Backup(ctx, repo, bytes.NewReader(img), int64(len(img)), opts)
		if err != nil {
			t.Fatal(err)
		}
		if i == 10 || i == 100 || i == 1000 {
			costs[i] = cs.take()
		}
		parent = m
	}
	for _, i := range []int{10, 100, 1000} {
		t.Logf("backup %4d: %v", i, costs[i])
	}
	same := func(a, b map[string]int) bool {
		return fmt.Sprint(a) == fmt.Sprint(b)
	}
	if !same(costs[10], costs[1000]) {
		t.Fatalf("an incremental backup costs %v with 10 backups stored, %v with 1,000", costs[10], costs[1000])
	}
	// The GC marker's look for collections, and the manifest's claim.
	if costs[1000]["LIST"] > 2 {
		t.Errorf("%d LISTs for one backup", costs[1000]["LIST"])
	}
}
