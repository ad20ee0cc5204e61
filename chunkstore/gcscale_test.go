package chunkstore_test

import (
	"context"
	"encoding/binary"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
)

// BenchmarkGCRepository5M is a whole collection of a repository whose
// manifests name 5 million distinct chunks: 20 backups of 1.2 TiB volumes
// (250,000 keys of 4 MiB chunks each), read from the store and decoded, the
// keys marked, the (empty) chunk listing swept. Peak heap is reported
// beside time: it must stay near the key set's bound, not grow like a map
// of every key (about 290 MiB for these).
func BenchmarkGCRepository5M(b *testing.B) {
	ctx := context.Background()
	r, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	const manifests, perManifest = 20, 250_000
	var n uint64
	for range manifests {
		keys := make([]chunkstore.Key, perManifest)
		for i := range keys {
			n++
			binary.BigEndian.PutUint64(keys[i][:8], n*0x9e3779b97f4a7c15)
			binary.BigEndian.PutUint64(keys[i][8:], n)
		}
		m := &chunkstore.Manifest{Version: chunkstore.ManifestVersion, ID: chunkstore.NewID(), VolumeID: "vol",
			Mode: chunkstore.ModeFull, Size: perManifest * 4 << 20, ChunkSize: 4 << 20,
			Started: time.Now(), Finished: time.Now(), Chunks: keys}
		if err := r.SaveManifest(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	for b.Loop() {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before, peak := ms.HeapInuse, ms.HeapInuse
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		rep, err := r.GC(ctx, chunkstore.GCOptions{TempDir: b.TempDir()})
		close(stop)
		<-done
		if err != nil || rep.Manifests != manifests || rep.MissingChunks != manifests*perManifest {
			b.Fatalf("gc: %+v, %v", rep, err)
		}
		b.ReportMetric(float64(peak-before)/(1<<20), "peak-MiB")
	}
}
