package dataplane_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
)

var update = flag.Bool("update", false, "write testdata/repo-v<FormatVersion> (only when the format version changes)")

// goldenDirs are small repositories written by each plain format version,
// kept in the tree so that every later build proves it still reads them.
var goldenDirs = []string{"../testdata/repo-v1", "../testdata/repo-v3"}

// TestGoldenRepository restores every backup of each checked-in
// repository and checks each against the SHA-256 recorded beside it.
func TestGoldenRepository(t *testing.T) {
	if *update {
		writeGolden(t, fmt.Sprintf("../testdata/repo-v%d", chunkstore.FormatVersion))
	}
	for i, dir := range goldenDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			r := testGolden(t, dir)
			if v := r.Config().Version; v != []int{chunkstore.FormatXXH64, chunkstore.FormatXXH3}[i] {
				t.Fatalf("%s is format %d", dir, v)
			}
		})
	}
}

func testGolden(t *testing.T, goldenDir string) *chunkstore.Repository {
	ctx := context.Background()
	want := map[string]string{}
	b, err := os.ReadFile(goldenDir + ".sha256")
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
	t.Cleanup(func() { r.Close() })
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
	return r
}

func writeGolden(t *testing.T, goldenDir string) {
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
	if err := os.WriteFile(goldenDir+".sha256", []byte(sums.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.Close()
}
