package main

import (
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIncrementalCost changes 41 MiB (4%) of a 1 GiB volume through NBD
// and checks that the next live backup reads and stores only the chunks
// that holds, and restores to the volume. (How fast, against the full
// backup, is BenchmarkLiveIncremental's figure.)
func TestIncrementalCost(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB volume skipped in -short mode")
	}
	requireTools(t, "nbdcopy")
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol.raw")
	const size = 1 << 30
	mustRun(t, "bench", "image", "--size", strconv.Itoa(size), "--seed", "21", vol)
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(dir, "repo")
	mustRun(t, "repo", "init", "--repo", repo)
	full := s.backup(repo, "vol1", "--parallelism", "4")
	if full.Mode != "full" {
		t.Fatalf("first backup: %s", full.Mode)
	}

	// Ten 4 MiB-aligned runs of 4 MiB plus one of
	// 1 MiB, at random places, written through NBD.
	r := rand.New(rand.NewPCG(5, 6))
	changed := int64(0)
	used := map[int64]bool{}
	for len(used) < 10 {
		chunk := r.Int64N(size / (4 << 20))
		if used[chunk] {
			continue
		}
		used[chunk] = true
		// Each run is different data, so none deduplicates.
		patch := filepath.Join(dir, "patch.raw")
		mustRun(t, "bench", "image", "--size", "4MiB", "--seed", strconv.Itoa(100+len(used)), "--pattern", "r", patch)
		tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -s "+patch+" "+strconv.FormatInt(chunk*(4<<20), 10)+" 4M", s.uri("vol1"))
		changed += 4 << 20
	}
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x17 "+strconv.FormatInt(size/2+12345, 10)+" 1M", s.uri("vol1"))
	changed += 1 << 20

	inc := s.backup(repo, "vol1", "--parallelism", "4")
	if inc.Mode != "incremental" {
		t.Fatalf("second backup: %s (%s)", inc.Mode, inc.Meta["fullReason"])
	}
	pctRead := 100 * float64(inc.Stats.BytesRead) / size
	pctStored := 100 * float64(inc.Stats.BytesStored) / size
	pctTime := 100 * inc.Seconds / full.Seconds
	t.Logf("changed %.2f%% of 1 GiB; incremental read %d bytes (%.2f%%), stored %d bytes (%.2f%%) in %.3f s = %.2f%% of the full backup's %.2f s",
		100*float64(changed)/size, inc.Stats.BytesRead, pctRead, inc.Stats.BytesStored, pctStored, inc.Seconds, pctTime, full.Seconds)
	// The 1 MiB write straddles at most two 4 MiB chunks: 12 chunks at most.
	if inc.Stats.BytesRead > 12*(4<<20) || inc.Stats.BytesRead < changed {
		t.Errorf("incremental read %d bytes for %d changed", inc.Stats.BytesRead, changed)
	}
	if inc.Stats.BytesStored > 12*(4<<20)+12*4096 || inc.Stats.BytesStored < 10*(4<<20) {
		t.Errorf("incremental stored %d bytes for %d changed", inc.Stats.BytesStored, changed)
	}
	// Its speed against the full backup's is BenchmarkLiveIncremental's
	// figure (dataplane), not this test's.
	// The incremental restores to exactly the volume.
	out := filepath.Join(dir, "out.raw")
	s.stop()
	mustRun(t, "restore", "--repo", repo, inc.ID, out)
	if !sameFiles(t, vol, out) {
		t.Fatal("incremental restore differs from the volume")
	}
}

// TestServerKilledMidBackup kills `volback serve` with SIGKILL during a
// backup. After a restart the volume's data is intact and the next
// backup of the chain is a full read that says why.
func TestServerKilledMidBackup(t *testing.T) {
	requireTools(t, "nbdcopy")
	dir := t.TempDir()
	vol := sparseFile(t, 1<<30)
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(dir, "repo")
	mustRun(t, "repo", "init", "--repo", repo)
	s.backup(repo, "vol1") // the chain exists and is valid from here on

	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "1GiB", "--seed", "31", "--pattern", "r", src)
	tool(t, time.Minute, "nbdcopy", src, s.uri("vol1"))

	done := make(chan result, 1)
	go func() {
		done <- run(t, "backup", "--live", "--parallelism", "1", "--state-dir", s.stateDir, "--repo", repo, "vol1")
	}()
	// Kill the server as soon as the backup has written a chunk.
	deadline := time.Now().Add(30 * time.Second)
	for {
		tmp, _ := filepath.Glob(filepath.Join(repo, "chunks", "*", ".tmp-*"))
		if len(tmp) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backup wrote no chunk within 30 s")
		}
		time.Sleep(time.Millisecond)
	}
	s.kill()
	if r := <-done; r.code == 0 {
		t.Fatal("the backup succeeded although its server was killed")
	}
	if !sameFiles(t, vol, src) {
		t.Fatal("the volume's data is not what was written to it")
	}
	mustRun(t, "verify", "--repo", repo)
	manifests, _ := filepath.Glob(filepath.Join(repo, "manifests", "*"))
	if len(manifests) != 1 {
		t.Fatalf("%d manifests after the kill, want only the first backup's", len(manifests))
	}

	s2 := startServe(t, s.stateDir, []string{"serve", "--state-dir", s.stateDir, "--volume", "vol1=" + vol})
	next := s2.backup(repo, "vol1")
	if next.Mode != "full" || !strings.Contains(next.Meta["fullReason"], "not closed cleanly") {
		t.Fatalf("backup after the kill: mode %s reason %q; want a full read because of the unclean stop", next.Mode, next.Meta["fullReason"])
	}
	t.Logf("after kill -9 the next backup is full: %s", next.Meta["fullReason"])
	s2.stop()
	out := filepath.Join(dir, "out.raw")
	mustRun(t, "restore", "--repo", repo, next.ID, out)
	if !sameFiles(t, src, out) {
		t.Fatal("backup after the kill does not restore the volume")
	}
}
