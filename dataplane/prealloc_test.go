package dataplane_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/volback/volback/dataplane"
)

// TestRestorePreallocates: a restore reserves its data chunks' blocks
// before it writes any, so onto a file system without room for them
// (a 4 MiB tmpfs, the backup holds 6 MiB of data) it fails at once with
// an error that says so, having fetched nothing and leaving nothing
// behind; with room, the restore matches the backup and its zero chunks
// stay holes.
func TestRestorePreallocates(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	ctx := context.Background()
	r, _ := repoKinds[1].open(t)
	data := image(21, 16*testChunk*8) // 128 chunks: 64 random, 32 text, 32 zero
	m, err := dataplane.Backup(ctx, r, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{VolumeID: "vol"})
	if err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(small, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
	var p dataplane.Progress
	_, err = dataplane.Restore(ctx, r, m, filepath.Join(small, "vol.raw"), dataplane.RestoreOptions{Progress: &p})
	if err == nil || !strings.Contains(err.Error(), "no room") || !strings.Contains(err.Error(), "96 data chunks") {
		t.Fatalf("restore onto a 4 MiB file system: %v, want an error saying there is no room for 96 data chunks", err)
	}
	if p.Done() != 0 {
		t.Fatalf("the failed restore processed %d bytes before failing", p.Done())
	}
	if left, _ := os.ReadDir(small); len(left) != 0 {
		t.Fatalf("the failed restore left %v", left)
	}

	target := filepath.Join(t.TempDir(), "vol.raw")
	if _, err := dataplane.Restore(ctx, r, m, target, dataplane.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(target)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored data differs (%v)", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	// 96 data chunks of 64 KiB allocated, the 32 zero chunks not.
	if used, want := st.Blocks*512, int64(96*testChunk); used < want || used >= want+16*testChunk {
		t.Fatalf("restored file uses %d bytes of disk, want about %d (zero chunks as holes)", used, want)
	}
}
