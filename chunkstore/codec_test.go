package chunkstore

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

// textChunk is a compressible chunk: words, as a volume's text files hold.
func textChunk(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "block %d of the volume, line %d; ", i%977, i)
	}
	return b.Bytes()[:n]
}

// TestAutoCompressionFollowsTheCPU shows CompressionAuto's choice: zstd
// while fewer callers compress than there are CPUs, LZ4 once they are all
// busy; and that either decodes.
func TestAutoCompressionFollowsTheCPU(t *testing.T) {
	c, err := newCodec(CompressionAuto, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	data := textChunk(1 << 20)
	key := h.Key(data)
	codecOf := func(enc []byte) byte { return enc[len(enc)-chunkTrailerSize] }

	c.cpus = 2
	enc := c.encode(nil, data)
	if got := codecOf(enc); got != codecZstd {
		t.Fatalf("idle CPU: codec %d, want zstd (%d)", got, codecZstd)
	}
	if out, err := c.decode(h.Key, key, nil, enc); err != nil || !bytes.Equal(out, data) {
		t.Fatalf("zstd chunk: %v", err)
	}
	// Two callers already compressing on two CPUs: the third gets LZ4.
	c.busy.Add(2)
	enc = c.encode(nil, data)
	c.busy.Add(-2)
	if got := codecOf(enc); got != codecLZ4 {
		t.Fatalf("busy CPU: codec %d, want lz4 (%d)", got, codecLZ4)
	}
	if out, err := c.decode(h.Key, key, nil, enc); err != nil || !bytes.Equal(out, data) {
		t.Fatalf("lz4 chunk: %v", err)
	}
	if c.busy.Load() != 0 {
		t.Fatalf("busy %d after encoding, want 0", c.busy.Load())
	}

	// Eight callers at once: every chunk decodes, whichever codec it got,
	// and the count of busy callers returns to zero.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 8 {
				enc := c.encode(nil, data)
				if out, err := c.decode(h.Key, key, nil, enc); err != nil || !bytes.Equal(out, data) {
					t.Errorf("concurrent chunk: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if c.busy.Load() != 0 {
		t.Fatalf("busy %d after encoding, want 0", c.busy.Load())
	}
}
