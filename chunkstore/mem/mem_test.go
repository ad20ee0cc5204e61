package mem

import (
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		s := New()
		// A second handle on the same memory is the same value.
		return s, func() chunkstore.Store { return s }
	})
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, New())
}
