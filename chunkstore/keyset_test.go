package chunkstore

import (
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"
)

func randomKeys(n int, seed uint64) []Key {
	r := rand.New(rand.NewPCG(seed, seed+1))
	ks := make([]Key, n)
	for i := range ks {
		for j := 0; j < 16; j += 8 {
			v := r.Uint64()
			for b := 0; b < 8; b++ {
				ks[i][j+b] = byte(v >> (8 * b))
			}
		}
	}
	return ks
}

// TestKeySetRuns: with a small buffer the set spills into several runs and
// gives back, shard by shard, exactly the distinct keys added, sorted.
// TestKeySetDuplicates: 30 manifests of one chain, each naming the same
// 5,000 keys but 50, stay in a buffer of 20,000 keys: duplicates are
// dropped when it fills, and no run is written.
func TestKeySetDuplicates(t *testing.T) {
	base := randomKeys(5000, 3)
	s := newKeySet(t.TempDir(), 20000)
	want := map[Key]bool{}
	for m := range 30 {
		ks := slices.Clone(base)
		copy(ks, randomKeys(50, uint64(100+m)))
		for _, k := range ks {
			want[k] = true
			if err := s.add(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if len(s.runs) != 0 {
		t.Fatalf("%d runs written for %d distinct keys in a buffer of 20000", len(s.runs), len(want))
	}
	got := 0
	var buf []Key
	for b := range 256 {
		var err error
		if buf, err = s.shard(byte(b), buf); err != nil {
			t.Fatal(err)
		}
		for _, k := range buf {
			if !want[k] {
				t.Fatalf("key %v never added", k)
			}
			got++
		}
	}
	if got != len(want) {
		t.Fatalf("%d keys back, %d distinct added", got, len(want))
	}
	s.close()
}

func TestKeySetRuns(t *testing.T) {
	for _, max := range []int{0, 1000} {
		keys := randomKeys(20000, 1)
		keys = append(keys, keys[:5000]...) // duplicates across runs
		s := newKeySet(t.TempDir(), max)
		for _, k := range keys {
			if err := s.add(k); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.finish(); err != nil {
			t.Fatal(err)
		}
		if max > 0 && len(s.runs) < 20 {
			t.Fatalf("%d runs for 25000 keys at 1000 a run", len(s.runs))
		}
		want := map[Key]bool{}
		for _, k := range keys {
			want[k] = true
		}
		got := 0
		var prev Key
		var dst []Key
		for b := 0; b < 256; b++ {
			var err error
			if dst, err = s.shard(byte(b), dst); err != nil {
				t.Fatal(err)
			}
			for i, k := range dst {
				if k[0] != byte(b) || !want[k] || (got > 0 && i > 0 && string(k[:]) <= string(prev[:])) {
					t.Fatalf("shard %d: key %s out of place", b, k)
				}
				prev = k
				got++
			}
		}
		if got != len(want) {
			t.Fatalf("max %d: %d keys back, %d distinct added", max, got, len(want))
		}
		s.close()
	}
}

// BenchmarkGCMark5M is the mark and the sweep's lookups for 5 million
// distinct keys in use: the former map of every key (and the map of those
// seen) against the bounded key set; peak heap is reported beside time.
func BenchmarkGCMark5M(b *testing.B) {
	const n = 5_000_000
	keys := randomKeys(n, 7)
	// A collector that runs as soon as the heap grows past what is live,
	// so the peak says what each way holds, not how late garbage goes.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	peak := func(stop chan struct{}) func() uint64 {
		var max uint64
		done := make(chan struct{})
		go func() {
			defer close(done)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				max = maxU(max, ms.HeapInuse)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		return func() uint64 { close(stop); <-done; return max }
	}
	base := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	b.Run("map", func(b *testing.B) {
		for b.Loop() {
			before := base()
			end := peak(make(chan struct{}))
			inUse := make(map[Key]struct{})
			for _, k := range keys {
				inUse[k] = struct{}{}
			}
			seen := make(map[Key]struct{}, len(inUse))
			for _, k := range keys {
				if _, ok := inUse[k]; ok {
					seen[k] = struct{}{}
				}
			}
			b.ReportMetric(float64(end()-before)/(1<<20), "peak-MiB")
		}
	})
	b.Run("keyset", func(b *testing.B) {
		// The sweep lists shard by shard; the listing is stood in for by
		// the keys themselves, bucketed by shard beforehand.
		var byShard [256][]Key
		for _, k := range keys {
			byShard[k[0]] = append(byShard[k[0]], k)
		}
		for b.Loop() {
			before := base()
			end := peak(make(chan struct{}))
			s := newKeySet(b.TempDir(), 0)
			for _, k := range keys {
				if err := s.add(k); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.finish(); err != nil {
				b.Fatal(err)
			}
			var dst []Key
			found := 0
			for sh := 0; sh < 256; sh++ {
				dst, _ = s.shard(byte(sh), dst)
				for _, k := range byShard[sh] {
					if _, ok := binarySearchKey(dst, k); ok {
						found++
					}
				}
			}
			s.close()
			if found != n {
				b.Fatalf("found %d of %d", found, n)
			}
			b.ReportMetric(float64(end()-before)/(1<<20), "peak-MiB")
		}
	})
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
