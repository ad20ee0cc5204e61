package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/volback/volback/chunkstore"
)

// Bench measures a driver's Put (with the Sync that makes it durable) and
// Get of 4 MiB objects, the default chunk size: each driver's benchmark
// calls it with a store on its real server.
func Bench(b *testing.B, s chunkstore.Store) {
	ctx := context.Background()
	data := payload(1, 4<<20)
	b.Run("Put4MiB", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ResetTimer()
		for i := range b.N {
			if err := s.Put(ctx, fmt.Sprintf("bench/put/%d", i), data); err != nil {
				b.Fatal(err)
			}
		}
		// Durable is what counts: the Sync is timed too.
		if err := s.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	})
	const objects = 8
	for i := range objects {
		if err := s.Put(ctx, fmt.Sprintf("bench/get/%d", i), data); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("Get4MiB", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for i := 0; b.Loop(); i++ {
			if _, err := s.Get(ctx, fmt.Sprintf("bench/get/%d", i%objects)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
