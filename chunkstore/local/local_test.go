package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		dir := t.TempDir()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s, func() chunkstore.Store {
			s2, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s2
		}
	})
}

// An unsynced Put must never be visible under its final name: a crash
// before Sync leaves only a temporary file, which readers ignore.
func TestUnsyncedPutInvisibleToOthers(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, _ := Open(dir)
	if err := s.Put(ctx, "chunks/ab/x", []byte("data")); err != nil {
		t.Fatal(err)
	}
	other, _ := Open(dir)
	if _, err := other.Get(ctx, "chunks/ab/x"); err == nil {
		t.Fatal("another handle sees an object before Sync")
	}
	if got := countFiles(t, dir, func(n string) bool { return !strings.HasPrefix(n, tmpPrefix) }); got != 0 {
		t.Fatalf("%d final files before Sync, want 0", got)
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Get(ctx, "chunks/ab/x"); err != nil {
		t.Fatalf("after Sync: %v", err)
	}
	if got := countFiles(t, dir, func(n string) bool { return strings.HasPrefix(n, tmpPrefix) }); got != 0 {
		t.Fatalf("%d temporary files after Sync, want 0", got)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, _ := Open(dir)
	_ = s.Put(ctx, "chunks/ab/x", []byte("data")) // never synced: a crash
	old := time.Now().Add(-2 * time.Hour)
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), tmpPrefix) {
			os.Chtimes(p, old, old)
		}
		return nil
	})
	fresh, _ := Open(dir)
	_ = fresh.Put(ctx, "chunks/ab/y", []byte("young"))
	n, err := fresh.RemoveStale(ctx, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("RemoveStale: removed %d (%v), want 1", n, err)
	}
	if err := fresh.Sync(ctx); err != nil {
		t.Fatalf("young pending object lost: %v", err)
	}
}

func TestPermanentErrors(t *testing.T) {
	if os.Getuid() == 0 {
		// root ignores permission bits; use a read-only path instead
		s, err := Open("/proc/self")
		if err == nil {
			err = s.Put(context.Background(), "x", []byte("y"))
		}
		if err == nil || chunkstore.IsTransient(err) {
			t.Fatalf("write to /proc: got %v, want a permanent error", err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	s, _ := Open(dir)
	err := s.Put(context.Background(), "x", []byte("y"))
	if err == nil || chunkstore.IsTransient(err) {
		t.Fatalf("write to read-only dir: got %v, want a permanent error", err)
	}
}

func countFiles(t *testing.T, dir string, match func(string) bool) int {
	t.Helper()
	n := 0
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && match(info.Name()) {
			n++
		}
		return nil
	})
	return n
}

func BenchmarkStore(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.Bench(b, s)
}
