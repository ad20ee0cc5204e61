package nfs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/nfs"
	"github.com/volback/volback/chunkstore/storetest"
)

func open(t testing.TB, g *storetest.Ganesha, sub string) *nfs.Store {
	t.Helper()
	host, path, err := nfs.ParseURL(g.URL(sub))
	if err != nil {
		t.Fatal(err)
	}
	o, err := nfs.ParseOptions(g.Options())
	if err != nil {
		t.Fatal(err)
	}
	o.Host, o.Path = host, path
	s, err := nfs.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("open %s: %v\n%s", sub, err, g.Log())
	}
	return s
}

func TestConformance(t *testing.T) {
	g := storetest.StartGanesha(t)
	var n atomic.Int32
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		sub := fmt.Sprintf("run%d/repo", n.Add(1))
		s := open(t, g, sub)
		return s, func() chunkstore.Store { return open(t, g, sub) }
	})
}

// TestServerRestart: a server that goes away fails calls with a transient
// error naming it, within timeo x retrans; once it is back the same store
// reconnects and carries on.
func TestServerRestart(t *testing.T) {
	g := storetest.StartGanesha(t)
	s := open(t, g, "repo")
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, "chunks/aa/one", []byte("one")); err != nil {
		t.Fatal(err)
	}
	g.Stop()
	t0 := time.Now()
	err := s.Put(ctx, "chunks/aa/two", []byte("two"))
	if err == nil || !chunkstore.IsTransient(err) || !strings.Contains(err.Error(), fmt.Sprintf("nfs://127.0.0.1:%d%s/repo", g.Port, g.Export)) {
		t.Fatalf("put with the server down: %v", err)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Fatalf("put with the server down took %v", d)
	}
	g.Start(t)
	var got []byte
	for i := 0; ; i++ {
		if err = s.Put(ctx, "chunks/aa/two", []byte("two")); err == nil {
			got, err = s.Get(ctx, "chunks/aa/one")
		}
		if err == nil || i > 50 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || !bytes.Equal(got, []byte("one")) {
		t.Fatalf("after the server came back: %q %v", got, err)
	}
	// Nothing half-written is left behind under a final name.
	b, err := os.ReadFile(filepath.Join(g.Export, "repo/chunks/aa/two"))
	if err != nil || string(b) != "two" {
		t.Fatalf("file on the server: %q %v", b, err)
	}
}

func TestMissingExport(t *testing.T) {
	g := storetest.StartGanesha(t)
	o, _ := nfs.ParseOptions(g.Options())
	o.Host, o.Path = "127.0.0.1", "/not/exported"
	_, err := nfs.Open(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("nfs://127.0.0.1:%d/not/exported", g.Port)) || !strings.Contains(err.Error(), "exported") {
		t.Fatalf("missing export: %v", err)
	}
	// No server at all: refused quickly, naming it.
	g.Stop()
	o.Path = g.Export
	_, err = nfs.Open(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("nfs://127.0.0.1:%d%s", g.Port, g.Export)) {
		t.Fatalf("no server: %v", err)
	}
}

func TestParseOptions(t *testing.T) {
	o, err := nfs.ParseOptions("nolock,vers=3,rsize=32768,wsize=65536,port=2049,mountport=20048,timeo=50,retrans=4,proto=tcp,hard,nconnect=2,noresvport,actimeo=30")
	if err != nil {
		t.Fatal(err)
	}
	if o.RSize != 32768 || o.WSize != 65536 || o.Port != 2049 || o.MountPort != 20048 || o.Timeout != 5*time.Second ||
		o.Retrans != 5 || o.Conns != 2 || o.ResvPort {
		t.Fatalf("parsed %+v", o)
	}
	for opts, want := range map[string]string{
		"vers=4":               "only NFS version 3",
		"nfsvers=4.1":          "only NFS version 3",
		"proto=udp":            "only tcp",
		"rsize=100":            "rsize=100",
		"wsize=abc":            "wsize=abc",
		"sec=krb5":             "sec=krb5",
		"ro":                   "writable",
		"frobnicate,zz=1,hard": "not supported: frobnicate, zz=1",
		"vers=3,,nolock":       "empty option",
		"timeo=0":              "timeo=0",
	} {
		if _, err := nfs.ParseOptions(opts); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOptions(%q) = %v, want an error containing %q", opts, err, want)
		}
	}
	for url, want := range map[string]string{"h:/e/p": "h /e/p", "[::1]:/e": "::1 /e", "10.0.0.1:/": "10.0.0.1 /"} {
		h, p, err := nfs.ParseURL(url)
		if err != nil || h+" "+p != want {
			t.Errorf("ParseURL(%q) = %q %q %v", url, h, p, err)
		}
	}
	for _, bad := range []string{"host", "/path", ":/x", "h:/a/../b"} {
		if _, _, err := nfs.ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
	_ = errors.New
}

func BenchmarkStore(b *testing.B) {
	s := open(b, storetest.StartGanesha(b), "bench")
	defer s.Close()
	storetest.Bench(b, s)
}

// TestRemoveStale: the temporary file of a writer that died before its
// RENAME is removed once older than the grace period; a young one and
// the objects stay.
func TestRemoveStale(t *testing.T) {
	g := storetest.StartGanesha(t)
	s := open(t, g, "stale")
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, "chunks/ab/kept", []byte("object")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(g.Export, "stale", "chunks", "ab")
	old, young := filepath.Join(dir, ".tmp-dead-1"), filepath.Join(dir, ".tmp-alive-2")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	n, err := s.RemoveStale(ctx, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("RemoveStale removed %d (%v), want 1", n, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Error("the dead writer's temporary is still there")
	}
	if _, err := os.Stat(young); err != nil {
		t.Error("a young temporary was removed")
	}
	if _, err := s.Stat(ctx, "chunks/ab/kept"); err != nil {
		t.Errorf("the object went: %v", err)
	}
}
