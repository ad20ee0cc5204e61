package chunkstore_test

import (
	"context"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
)

// BenchmarkGetChunk reads one 4 MiB chunk from a local store (from the
// page cache after the first read) into a NewChunkBuffer, as restore
// does, and with no buffer, as before stores could read into one: the
// difference is the allocation and zeroing of a chunk per read.
func BenchmarkGetChunk(b *testing.B) {
	ctx := context.Background()
	s, err := local.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: 4 << 20, Compression: chunkstore.CompressionAutoS2})
	if err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"random", "text"} {
		data := randomBytes(5, 4<<20)
		if kind == "text" {
			data = textBytes(4 << 20)
		}
		k := r.Key(data)
		if _, err := r.PutChunk(ctx, k, data); err != nil {
			b.Fatal(err)
		}
		for _, into := range []string{"chunk-buffer", "nil"} {
			b.Run(kind+"/"+into, func(b *testing.B) {
				var dst []byte
				if into == "chunk-buffer" {
					dst = r.NewChunkBuffer()
				}
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := r.GetChunk(ctx, k, dst); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
