package dataplane_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/volback/volback/dataplane"
)

// TestBackupSkipsHoles backs up a sparse file: chunks wholly in holes are
// zero chunks that are never read, a chunk partly in a hole and one of
// written zeros are read, and the restore matches the file byte for byte.
func TestBackupSkipsHoles(t *testing.T) {
	const cs = testChunk
	size := int64(9*cs + 1000)
	p := filepath.Join(t.TempDir(), "sparse.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(off int64, b []byte) {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	write(0, randomData(1, cs))              // chunk 0: data
	write(4*cs, randomData(2, 4096))         // chunk 4: 4 KiB of data, then a hole
	write(5*cs, make([]byte, cs))            // chunk 5: written zeros
	write(6*cs, randomData(3, cs))           // chunk 6: data
	if err := f.Truncate(size); err != nil { // chunks 1-3 and 7-9: holes
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range repoKinds {
		t.Run(k.name, func(t *testing.T) {
			r, _ := k.open(t)
			m, err := dataplane.Backup(context.Background(), r, f, size, dataplane.BackupOptions{VolumeID: "sparse", Parallelism: 3})
			if err != nil {
				t.Fatal(err)
			}
			if m.Stats.ChunksZero != 7 || m.Stats.ChunksRead != 4 || m.Stats.BytesRead != 4*cs {
				t.Errorf("zero chunks %d, read %d chunks (%d bytes); want 7 zero, 4 chunks read (%d bytes): holes read or data skipped",
					m.Stats.ChunksZero, m.Stats.ChunksRead, m.Stats.BytesRead, 4*cs)
			}
			if m.Stats.BytesZero != 6*cs+1000 {
				t.Errorf("zero bytes %d, want %d", m.Stats.BytesZero, 6*cs+1000)
			}
			if got := restoreBytes(t, r, m); !bytes.Equal(got, want) {
				t.Fatal("restored sparse file differs")
			}
		})
	}
}
