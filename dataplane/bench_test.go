package dataplane_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/volback/volback/bench"
	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

// BenchmarkBackupFull backs up a generated 256 MiB image (half random, a
// quarter text, a quarter zeros) into a fresh repository per iteration.
func BenchmarkBackupFull(b *testing.B) {
	ctx := context.Background()
	img := filepath.Join(b.TempDir(), "image.raw")
	const size = 256 << 20
	if err := bench.GenerateImage(ctx, img, bench.ImageSpec{Size: size, Seed: 1}); err != nil {
		b.Fatal(err)
	}
	f, _, err := dataplane.OpenVolume(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	stores := map[string]func(b *testing.B) chunkstore.Store{
		"mem": func(*testing.B) chunkstore.Store { return mem.New() },
		"local": func(b *testing.B) chunkstore.Store {
			s, err := local.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	for _, name := range []string{"mem", "local"} {
		for _, par := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/par=%d", name, par), func(b *testing.B) {
				b.SetBytes(size)
				for b.Loop() {
					b.StopTimer()
					r, err := chunkstore.Init(ctx, stores[name](b), chunkstore.InitOptions{})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if _, err := dataplane.Backup(ctx, r, f, size, dataplane.BackupOptions{Parallelism: par}); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					r.Close()
					b.StartTimer()
				}
			})
		}
	}
}

// restoreBench backs a generated image of size up into a local
// repository in a temporary directory, for the restore benchmarks.
func restoreBench(b *testing.B, size int64) (string, *chunkstore.Repository, *chunkstore.Manifest) {
	b.Helper()
	img, r := benchImageAndRepo(b, size, 2)
	f, _, err := dataplane.OpenVolume(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	m, err := dataplane.Backup(context.Background(), r, f, size, dataplane.BackupOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return filepath.Dir(img), r, m
}

// BenchmarkRestore restores a 256 MiB backup from a local repository.
func BenchmarkRestore(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	dir, r, m := restoreBench(b, size)
	b.SetBytes(size)
	for b.Loop() {
		out := filepath.Join(dir, "out.raw")
		if _, err := dataplane.Restore(ctx, r, m, out, dataplane.RestoreOptions{Force: true}); err != nil {
			b.Fatal(err)
		}
		os.Remove(out)
	}
}

// BenchmarkLiveRestore copies a 256 MiB backup from a local repository
// into a new live-restored volume (the background copy of
// CreateDataVolumeFromVolumeBackup, no client I/O), each chunk read back
// from the disk and checked, or not.
func BenchmarkLiveRestore(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	dir, r, m := restoreBench(b, size)
	for _, skip := range []bool{false, true} {
		name := "verified"
		if skip {
			name = "unverified"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				out := filepath.Join(dir, "live.raw")
				if err := os.WriteFile(out, nil, 0o600); err != nil {
					b.Fatal(err)
				}
				if err := os.Truncate(out, size); err != nil {
					b.Fatal(err)
				}
				v, err := dataplane.OpenLiveVolume("live", out, dataplane.VolumeOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if err := v.StartRestore(r, m, out+".restore", "bench"); err != nil {
					b.Fatal(err)
				}
				if err := v.RunRestore(ctx, dataplane.RestoreRunOptions{SkipVerify: skip}); err != nil {
					b.Fatal(err)
				}
				v.Close()
				os.Remove(out)
			}
		})
	}
}

// BenchmarkImageSequential reads a backup of a generated 256 MiB image
// (half random, a quarter text, a quarter zeros) front to back through an
// Image in 1 MiB reads, as a FUSE mount or an NBD export of it does: a
// fresh Image per iteration, so every chunk is fetched and checked.
func BenchmarkImageSequential(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	img, r := benchImageAndRepo(b, size, 1)
	f, _, err := dataplane.OpenVolume(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	m, err := dataplane.Backup(ctx, r, f, size, dataplane.BackupOptions{VolumeID: "v"})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		im := dataplane.OpenImage(r, m, dataplane.ImageOptions{})
		for off := int64(0); off < size; off += int64(len(buf)) {
			if err := im.ReadAt(ctx, buf, off); err != nil {
				b.Fatal(err)
			}
		}
		im.Close()
	}
}

// revertBench is a live volume of a generated image of size and its
// backup in a local repository, for the revert benchmarks.
func revertBench(b *testing.B, size int64) (*dataplane.Volume, *chunkstore.Repository, *chunkstore.Manifest) {
	b.Helper()
	img, r := benchImageAndRepo(b, size, 2)
	v, err := dataplane.OpenLiveVolume("v", img, dataplane.VolumeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	m, err := v.Backup(context.Background(), r, dataplane.LiveBackupOptions{Chain: "c"})
	if err != nil {
		b.Fatal(err)
	}
	return v, r, m
}

// BenchmarkRevertUnchanged reverts a 256 MiB volume to the backup it
// already equals: the cost of deciding, chunk by chunk, that nothing
// needs writing (read + hash), the common case of a revert after few
// changes.
func BenchmarkRevertUnchanged(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	v, r, m := revertBench(b, size)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := v.Revert(ctx, r, m, dataplane.RevertOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if st.ChunksWritten != 0 {
			b.Fatalf("wrote %d chunks", st.ChunksWritten)
		}
	}
}

// BenchmarkRevertChanged reverts a 1 GiB volume every 4 MiB chunk of
// which was changed since its backup (1 MiB at each chunk's start, not
// timed), each rewritten chunk read back from the disk and checked.
func BenchmarkRevertChanged(b *testing.B) {
	ctx := context.Background()
	const size = 1 << 30
	v, r, m := revertBench(b, size)
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = byte(i*7 + 1)
	}
	b.SetBytes(size)
	for b.Loop() {
		b.StopTimer()
		for off := int64(0); off < size; off += 4 << 20 {
			junk[0]++
			if err := v.WriteAt(ctx, junk, off, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		st, err := v.Revert(ctx, r, m, dataplane.RevertOptions{Verify: true})
		if err != nil {
			b.Fatal(err)
		}
		if st.ChunksWritten != int(size/m.ChunkSize) {
			b.Fatalf("rewrote %d chunks, want %d", st.ChunksWritten, size/m.ChunkSize)
		}
	}
}

// benchImageAndRepo generates an image of size bytes (half random, a
// quarter text, a quarter zeros) and an empty local repository beside it.
func benchImageAndRepo(b *testing.B, size int64, seed uint64) (string, *chunkstore.Repository) {
	b.Helper()
	dir := b.TempDir()
	img := filepath.Join(dir, "image.raw")
	if err := bench.GenerateImage(context.Background(), img, bench.ImageSpec{Size: size, Seed: seed}); err != nil {
		b.Fatal(err)
	}
	s, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return img, r
}

// BenchmarkLiveIncremental measures what an incremental live backup costs
// against a full one of the same volume: 1% of a 1 GiB volume rewritten
// (ten 1 MiB runs in different chunks, new data each round), then an
// incremental. It reports the incremental's time as a percentage of the
// full backup's ("%full"; the target is at most 3) and the bytes it read.
func BenchmarkLiveIncremental(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	img := filepath.Join(dir, "vol.raw")
	const size = 1 << 30
	if err := bench.GenerateImage(ctx, img, bench.ImageSpec{Size: size, Seed: 21}); err != nil {
		b.Fatal(err)
	}
	v, err := dataplane.OpenLiveVolume("vol", img, dataplane.VolumeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	s, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	if _, err := v.Backup(ctx, r, dataplane.LiveBackupOptions{Chain: "c", Mode: chunkstore.ModeFull, Parallelism: 4}); err != nil {
		b.Fatal(err)
	}
	full := time.Since(start)
	patch := make([]byte, 1<<20)
	var read int64
	var took time.Duration
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		for i := range 10 {
			for j := range patch {
				patch[j] = byte(j*31 + i*7 + round*13 + j>>9)
			}
			off := int64(i)*(size/10) + int64(round%8)*(4<<20)
			if err := v.WriteAt(ctx, patch, off, false); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		t0 := time.Now()
		m, err := v.Backup(ctx, r, dataplane.LiveBackupOptions{Chain: "c", Mode: chunkstore.ModeIncremental, Parallelism: 4})
		if err != nil {
			b.Fatal(err)
		}
		took += time.Since(t0)
		read += m.Stats.BytesRead
	}
	b.ReportMetric(100*took.Seconds()/float64(b.N)/full.Seconds(), "%full")
	b.ReportMetric(float64(read)/float64(b.N), "B-read/op")
}
