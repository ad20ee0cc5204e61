package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// TestWritesKeepEveryLength: objects of every length around the device
// block (the aligned part goes direct, the tail through the page cache),
// from aligned and unaligned buffers, read back exactly from the disk
// once their cached pages are dropped.
func TestWritesKeepEveryLength(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	lengths := []int{1, 12, 4095, 4096, 4097, 8191, 1 << 20, 1<<20 + 12, 3<<20 + 4095}
	want := map[string][]byte{}
	for i, n := range lengths {
		for _, shift := range []int{0, 5} { // an aligned buffer, then not
			buf := chunkstore.AlignedBuffer(n+shift, n+shift+64)[shift:]
			for j := range buf {
				buf[j] = byte(j*7 + i + shift)
			}
			name := fmt.Sprintf("chunks/%02x/len%d-%d", i, n, shift)
			if err := s.Put(ctx, name, buf); err != nil {
				t.Fatalf("put %d bytes: %v", n, err)
			}
			want[name] = append([]byte(nil), buf...)
		}
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for name, data := range want {
		p := filepath.Join(dir, filepath.FromSlash(name))
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED) // read the disk, not the cache
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %d bytes, want the %d written", name, len(got), len(data))
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, err %v; want 0600", name, fi.Mode(), err)
		}
	}
}

// BenchmarkPutChunk stores 4 MiB chunks with their 12-byte trailer, as a
// backup does, each made durable by Sync in rounds of 16.
func BenchmarkPutChunk(b *testing.B) {
	dir := b.TempDir()
	ctx := context.Background()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	const n = 4<<20 + 12
	buf := chunkstore.AlignedBuffer(n, n+64)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.SetBytes(n)
	for i := 0; b.Loop(); i++ {
		if err := s.Put(ctx, fmt.Sprintf("chunks/%02x/%d", i%256, i), buf); err != nil {
			b.Fatal(err)
		}
		if i%16 == 15 {
			if err := s.Sync(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := s.Sync(ctx); err != nil {
		b.Fatal(err)
	}
}
