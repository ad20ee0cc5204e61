package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// loopDevice attaches file to a free loop device and detaches it when the
// test ends. Outside CI it skips the test where loop devices cannot be
// used; in CI that is a failure.
func loopDevice(t *testing.T, file string) string {
	t.Helper()
	requireRoot(t)
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// TestBlockDevices backs up a block device and restores the backup onto
// another block device.
func TestBlockDevices(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	dst := filepath.Join(dir, "dst.raw")
	repo := filepath.Join(dir, "repo")
	mustRun(t, "bench", "image", "--size", "96MiB", "--seed", "3", src)
	mustRun(t, "bench", "image", "--size", "96MiB", "--seed", "4", "--pattern", "r", dst)
	srcDev := loopDevice(t, src)
	dstDev := loopDevice(t, dst)
	mustRun(t, "repo", "init", "--repo", repo)
	b := backupJSONRun(t, repo, srcDev)
	if b.Size != 96<<20 {
		t.Fatalf("backup of %s saw %d bytes, want %d", srcDev, b.Size, 96<<20)
	}
	if r := run(t, "restore", "--repo", repo, b.ID, dstDev); r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("restore to a device without --force: exit %d, %s", r.code, r.stderr)
	}
	mustRun(t, "restore", "--repo", repo, "--force", b.ID, dstDev)
	// Zero chunks must have been written as zeros over the old random data.
	if !sameFiles(t, srcDev, dstDev) {
		t.Fatal("restored device differs from the source device")
	}
}
