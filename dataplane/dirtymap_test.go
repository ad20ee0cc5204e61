package dataplane

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// reference marks a plain []bool for comparison.
func referenceExtents(size, gran int64, marks [][2]int64) []Extent {
	blocks := (size + gran - 1) / gran
	set := make([]bool, blocks)
	for _, m := range marks {
		if m[1] <= 0 {
			continue
		}
		for b := m[0] / gran; b <= (m[0]+m[1]-1)/gran; b++ {
			set[b] = true
		}
	}
	var out []Extent
	for b := int64(0); b < blocks; b++ {
		if !set[b] {
			continue
		}
		off := b * gran
		end := min((b+1)*gran, size)
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == off {
			out[n-1].Length += end - off
		} else {
			out = append(out, Extent{Offset: off, Length: end - off})
		}
	}
	if out == nil {
		out = []Extent{}
	}
	return out
}

func TestDirtyMapAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 300 {
		size := int64(r.IntN(1<<24) + 1)
		gran := int64(512) << r.IntN(8)
		d, err := NewDirtyMap(size, gran)
		if err != nil {
			t.Fatal(err)
		}
		var marks [][2]int64
		for range r.IntN(20) {
			off := r.Int64N(size)
			length := r.Int64N(size-off) + 1
			if r.IntN(3) == 0 {
				length = min(length, int64(r.IntN(4096)+1))
			}
			marks = append(marks, [2]int64{off, length})
			d.Mark(off, length)
		}
		want := referenceExtents(size, gran, marks)
		got := d.Extents()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("iter %d size %d gran %d marks %v:\ngot  %v\nwant %v", iter, size, gran, marks, got, want)
		}
		var bytes int64
		for _, e := range want {
			bytes += e.Length
		}
		if d.DirtyBytes() != bytes {
			t.Fatalf("iter %d: DirtyBytes %d, want %d", iter, d.DirtyBytes(), bytes)
		}
		b, _ := d.MarshalBinary()
		d2, _ := NewDirtyMap(size, gran)
		if err := d2.UnmarshalBinary(b); err != nil || fmt.Sprint(d2.Extents()) != fmt.Sprint(want) {
			t.Fatalf("round trip: %v", err)
		}
		d3, _ := NewDirtyMap(size, gran)
		d3.Or(d)
		if fmt.Sprint(d3.Extents()) != fmt.Sprint(want) {
			t.Fatal("Or into an empty map differs")
		}
	}
}

func BenchmarkDirtyMapMark(b *testing.B) {
	d, _ := NewDirtyMap(1<<40, DefaultGranularity)
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), 2))
		for pb.Next() {
			d.Mark(r.Int64N(1<<40-4096)&^4095, 4096)
		}
	})
}
