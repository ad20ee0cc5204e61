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

// TestAutoCompressionFollowsTheStore shows CompressionAuto's choice: LZ4
// while the store waits for chunks, zstd once writes queue up and a CPU is
// free for it, LZ4 again when every CPU runs zstd; and that each decodes.
func TestAutoCompressionFollowsTheStore(t *testing.T) {
	c, err := newCodec(CompressionAuto, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	data := textChunk(1 << 20)
	key := h.Key(data)
	codecOf := func(enc []byte) byte { return enc[len(enc)-chunkTrailerSize] }
	c.cpus = 2
	for _, tc := range []struct {
		writing, zbusy int32
		want           byte
	}{
		{0, 0, codecLZ4}, // the store is idle: feed it fast
		{autoQueue - 1, 0, codecLZ4},
		{autoQueue, 0, codecZstd}, // writes queued: the CPU's time is free
		{autoQueue, 1, codecZstd},
		{autoQueue, 2, codecLZ4}, // both CPUs run zstd already
	} {
		c.writing.Store(tc.writing)
		c.zbusy.Store(tc.zbusy)
		enc := c.encode(nil, data)
		if got := codecOf(enc); got != tc.want {
			t.Errorf("%d writes queued, %d zstd running: codec %d, want %d", tc.writing, tc.zbusy, got, tc.want)
		}
		if out, err := c.decode(h.Key, key, nil, enc); err != nil || !bytes.Equal(out, data) {
			t.Fatalf("codec %d chunk: %v", codecOf(enc), err)
		}
		if c.zbusy.Load() != tc.zbusy {
			t.Fatalf("zstd count %d after encoding, want %d", c.zbusy.Load(), tc.zbusy)
		}
	}
	c.writing.Store(autoQueue)
	c.zbusy.Store(0)

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
	if c.zbusy.Load() != 0 {
		t.Fatalf("zstd count %d after encoding, want 0", c.zbusy.Load())
	}
}
