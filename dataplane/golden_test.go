package dataplane_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
)

var update = flag.Bool("update", false, "rewrite testdata/repo-v1 (only when the format version changes)")

// goldenDir is a small repository written by format version 1, kept in the
// tree so that every later build proves it still reads it.
const goldenDir = "../testdata/repo-v1"

// TestGoldenRepository restores every backup of the checked-in format-1
// repository and checks each against the SHA-256 recorded beside it.
func TestGoldenRepository(t *testing.T) {
	ctx := context.Background()
	if *update {
		writeGolden(t)
	}
	want := map[string]string{}
	b, err := os.ReadFile(filepath.Join(goldenDir, "..", "repo-v1.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		want[f[1]] = f[0]
	}
	s, err := local.Open(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Open(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := r.ListBackups(ctx)
	if err != nil || len(ids) != len(want) || len(ids) == 0 {
		t.Fatalf("golden repository lists %v (%v), want %d backups", ids, err, len(want))
	}
	for _, id := range ids {
		m, err := r.LoadManifest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		got := sha256.Sum256(restoreBytes(t, r, m))
		if hex.EncodeToString(got[:]) != want[id] {
			t.Errorf("backup %s restores to sha256 %x, want %s", id, got, want[id])
		}
	}
	rep, err := r.Verify(ctx, nil, chunkstore.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("verify golden repository: %+v %v", rep, err)
	}
}

func writeGolden(t *testing.T) {
	ctx := context.Background()
	os.RemoveAll(goldenDir)
	s, err := local.Open(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: chunkstore.MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	var sums strings.Builder
	data := image(11, 5*testChunk+1234)
	var parent *chunkstore.Manifest
	for i := range 2 {
		if i == 1 {
			copy(data[testChunk+5:], "second backup")
		}
		opts := dataplane.BackupOptions{VolumeID: "golden", Meta: map[string]string{"name": "golden"}}
		if parent != nil {
			opts.Parent = parent
			opts.Changed = []dataplane.Extent{{Offset: testChunk + 5, Length: 13}}
		}
		m, err := dataplane.Backup(ctx, r, strings.NewReader(string(data)), int64(len(data)), opts)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		sums.WriteString(hex.EncodeToString(sum[:]) + "  " + m.ID + "\n")
		parent = m
	}
	if err := os.WriteFile(filepath.Join(goldenDir, "..", "repo-v1.sha256"), []byte(sums.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.Close()
}
