package chunkstore

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

func benchData(kind string, n int) []byte {
	b := make([]byte, n)
	switch kind {
	case "random":
		_, _ = rand.NewChaCha8([32]byte{1}).Read(b)
	case "text":
		words := []string{"the ", "volume ", "block ", "backup ", "of ", "and ", "kernel ", "page ", "\n", "12:30:50 "}
		r := rand.New(rand.NewPCG(1, 2))
		var buf bytes.Buffer
		for buf.Len() < n {
			buf.WriteString(words[r.IntN(len(words))])
		}
		copy(b, buf.Bytes())
	case "zero":
	}
	return b
}

func BenchmarkKey(b *testing.B) {
	for _, h := range []struct {
		name string
		h    Hasher
	}{{"xxh3", Hasher{Seed1: 1, XXH3: true}}, {"xxh64x2", Hasher{Seed1: 1, Seed2: 2}}} {
		for _, n := range []int{64 << 10, 4 << 20, 64 << 20} {
			data := benchData("random", n)
			b.Run(fmt.Sprintf("%s/%dKiB", h.name, n>>10), func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					_ = h.h.Key(data)
				}
			})
		}
	}
}

func BenchmarkIsZero(b *testing.B) {
	for _, kind := range []string{"zero", "random"} {
		data := benchData(kind, 4<<20)
		b.Run(kind, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_ = IsZero(data)
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, comp := range []Compression{CompressionZstd, CompressionS2, CompressionLZ4} {
		b.Run(string(comp), func(b *testing.B) { benchmarkEncode(b, comp) })
	}
}

func benchmarkEncode(b *testing.B, comp Compression) {
	c, err := newCodec(comp, 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"random", "text"} {
		data := benchData(kind, 4<<20)
		b.Run(kind, func(b *testing.B) {
			dst := make([]byte, 0, 5<<20)
			b.SetBytes(int64(len(data)))
			var n int
			for b.Loop() {
				n = len(c.encode(dst, data))
			}
			b.ReportMetric(float64(len(data))/float64(n), "ratio")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, comp := range []Compression{CompressionZstd, CompressionS2, CompressionLZ4} {
		b.Run(string(comp), func(b *testing.B) { benchmarkDecode(b, comp) })
	}
}

func benchmarkDecode(b *testing.B, comp Compression) {
	c, err := newCodec(comp, 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	for _, kind := range []string{"random", "text"} {
		data := benchData(kind, 4<<20)
		enc := c.encode(nil, data)
		k := h.Key(data)
		b.Run(kind, func(b *testing.B) {
			dst := make([]byte, 0, 4<<20)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := c.decode(h.Key, k, dst, enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealedChunk is the cost encryption adds per chunk: the keyed
// name, then sealing (put) or opening (get) the encoded chunk.
func BenchmarkSealedChunk(b *testing.B) {
	keys, err := deriveKeys(make([]byte, 32), NewID())
	if err != nil {
		b.Fatal(err)
	}
	data := benchData("random", 4<<20)
	b.Run("name", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			_ = keys.chunkKey(data)
		}
	})
	buf := make([]byte, 0, len(data)+chunkSpare)
	ad := chunkAD(Key{1})
	b.Run("seal", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := seal(keys.chunks, buf[:0], data, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
	sealed, _ := seal(keys.chunks, nil, data, ad)
	b.Run("open", func(b *testing.B) {
		work := make([]byte, len(sealed))
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			copy(work, sealed)
			if _, err := unseal(keys.chunks, work, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
