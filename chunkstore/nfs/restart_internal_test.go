package nfs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore/storetest"
)

// TestServerRestartBeforeCommit: the server restarts between an object's
// unstable writes and its COMMIT, so it may have lost them; the COMMIT's
// verifier differs from the writes', and the object is written again
// stably: what lands under the name is whole.
func TestServerRestartBeforeCommit(t *testing.T) {
	g := storetest.StartGanesha(t)
	host, path, err := ParseURL(g.URL("repo"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseOptions(g.Options() + ",wsize=65536")
	if err != nil {
		t.Fatal(err)
	}
	o.Host, o.Path = host, path
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	restarted := 0
	testHookBeforeCommit = func() {
		if restarted == 0 {
			restarted++
			g.Stop()
			// Ganesha's verifier is its start time in seconds.
			time.Sleep(1100 * time.Millisecond)
			g.Start(t)
		}
	}
	defer func() { testHookBeforeCommit = nil }()
	data := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640000 bytes: 10 writes
	if err := s.Put(context.Background(), "chunks/ab/object", data); err != nil {
		t.Fatalf("put across a server restart: %v", err)
	}
	if restarted != 1 || s.stableRewrites.Load() != 1 {
		t.Fatalf("hook ran %d times, %d stable rewrites; want 1 and 1 (the verifier must change)", restarted, s.stableRewrites.Load())
	}
	got, err := os.ReadFile(filepath.Join(g.Export, "repo/chunks/ab/object"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("object on the server: %d bytes, %v", len(got), err)
	}
}
