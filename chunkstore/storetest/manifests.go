package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
)

// SaveManifests saves n backups into r straight through the repository,
// 16 at a time, as scale tests need them: each of a volume of 256 chunks,
// all naming one stored chunk, of one of volumes volumes (ids of 32 hex
// digits), named backup-I, finished one second apart. It returns their
// ids in order.
func SaveManifests(tb testing.TB, r *chunkstore.Repository, n, volumes int) []string {
	tb.Helper()
	ctx := context.Background()
	data := make([]byte, r.ChunkSize())
	data[0] = 1
	k := r.Key(data)
	if _, err := r.PutChunk(ctx, k, data); err != nil {
		tb.Fatal(err)
	}
	chunks := make([]chunkstore.Key, 256)
	for i := range chunks {
		chunks[i] = k
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ids[i] = chunkstore.NewID()
				m := &chunkstore.Manifest{Version: chunkstore.ManifestVersion, ID: ids[i], VolumeID: fmt.Sprintf("%032x", i%volumes),
					Mode: chunkstore.ModeFull, Size: 256 * int64(r.ChunkSize()), ChunkSize: r.ChunkSize(),
					Started: time.Unix(1.7e9+int64(i), 0).UTC(), Finished: time.Unix(1.7e9+int64(i)+1, 0).UTC(),
					Meta: map[string]string{"name": fmt.Sprint("backup-", i)}, Chunks: chunks}
				if err := r.SaveManifest(ctx, m); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		tb.Fatal(first)
	}
	return ids
}
