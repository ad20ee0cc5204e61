package chunkstore

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// textChunk is a compressible chunk: words, as a volume's text files hold.
func textChunk(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "block %d of the volume, line %d; ", i%977, i)
	}
	return b.Bytes()[:n]
}

// TestAutoCompressionFollowsTheCPU shows the automatic settings' choice:
// zstd while fewer callers compress than there are CPUs and the host has
// an idle CPU, the fast codec (S2 for auto-s2, LZ4 for auto) once they are
// all busy or the host has none; and that every chunk decodes.
func TestAutoCompressionFollowsTheCPU(t *testing.T) {
	for _, tc := range []struct {
		comp Compression
		fast byte
	}{{CompressionAutoS2, codecS2}, {CompressionAuto, codecLZ4}} {
		t.Run(string(tc.comp), func(t *testing.T) { testAutoCompression(t, tc.comp, tc.fast) })
	}
}

func testAutoCompression(t *testing.T, comp Compression, fast byte) {
	c, err := newCodec(comp, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	data := textChunk(1 << 20)
	key := h.Key(data)
	codecOf := func(enc []byte) byte { return enc[len(enc)-chunkTrailerSize] }
	roundTrip := func(what string, enc []byte) {
		t.Helper()
		if out, err := c.decode(h.Key, key, nil, enc); err != nil || !bytes.Equal(out, data) {
			t.Fatalf("%s: %v", what, err)
		}
	}

	c.cpus, c.slots = 2, make(chan struct{}, 2)
	idle := true
	c.room = func() bool { return idle }
	enc := c.encode(nil, data)
	if got := codecOf(enc); got != codecZstd {
		t.Fatalf("idle CPU: codec %d, want zstd (%d)", got, codecZstd)
	}
	roundTrip("zstd chunk", enc)
	// Two callers already compressing on two CPUs, and the store busy
	// writing: the third gets the fast codec.
	c.busy.Add(2)
	c.writes.Add(idleWrites)
	enc = c.encode(nil, data)
	c.writes.Add(-idleWrites)
	if got := codecOf(enc); got != fast {
		t.Fatalf("busy compressors: codec %d, want %d", got, fast)
	}
	roundTrip("fast chunk", enc)
	// The same while the store has less than idleWrites to write: the
	// chunk is stored as is rather than wait for a CPU.
	c.writes.Add(idleWrites - 1)
	enc = c.encode(nil, data)
	c.writes.Add(1 - idleWrites)
	c.busy.Add(-2)
	if got := codecOf(enc); got != codecRaw {
		t.Fatalf("busy compressors, store waiting: codec %d, want stored (%d)", got, codecRaw)
	}
	roundTrip("chunk stored as is", enc)
	// No compressor busy here, but the host's CPUs are (its guests).
	idle = false
	if got := codecOf(c.encode(nil, data)); got != fast {
		t.Fatalf("busy host: codec %d, want %d", got, fast)
	}
	idle = true
	// Random data is stored as is, whatever the CPU.
	rnd := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(rnd)
	if got := codecOf(c.encode(nil, rnd)); got != codecRaw {
		t.Fatalf("incompressible chunk: codec %d, want stored (%d)", got, codecRaw)
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

// TestCPURoom shows the meter behind auto: room while at least one CPU of
// the host was idle over the last window, none below that, the reading
// kept for a window, and room when /proc/stat cannot be read.
func TestCPURoom(t *testing.T) {
	cpus := uint64(hostCPUs())
	var idle, total uint64
	ok := true
	m := &cpuRoom{window: time.Hour, read: func() (uint64, uint64, bool) { return idle, total, ok }, room: true}
	step := func(dIdle, dTotal uint64) bool {
		idle, total = idle+dIdle, total+dTotal
		m.at = time.Time{}.Add(time.Second) // the window has passed
		return m.hasRoom()
	}
	m.hasRoom() // the first reading: a baseline, room assumed
	if !step(100*cpus, 100*cpus) {
		t.Fatal("all idle: no room")
	}
	if step(0, 100*cpus) {
		t.Fatal("no idle: room")
	}
	// Exactly one CPU idle out of all of them: room.
	if !step(100, 100*cpus) {
		t.Fatal("one CPU idle: no room")
	}
	if step(99, 100*cpus) {
		t.Fatal("less than one CPU idle: room")
	}
	// Within the window the last answer stands, whatever the counters.
	m.at = time.Now()
	idle += 1000 * cpus
	total += 1000 * cpus
	if m.hasRoom() {
		t.Fatal("reading within the window changed the answer")
	}
	ok = false
	if !step(0, 0) {
		t.Fatal("unreadable /proc/stat: no room")
	}
	// The real /proc/stat parses.
	if _, tot, ok := procStat(); !ok || tot == 0 {
		t.Fatalf("procStat: total %d, ok %v", tot, ok)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 x 4 5", "cpu 1 2"} {
		if _, _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("parseProcStat(%q) ok", bad)
		}
	}
	if i, tot, ok := parseProcStat([]byte("cpu  10 1 5 70 4 2 3 5 9 0\ncpu0 1 1 1 1 1 1 1 1\n")); !ok || i != 74 || tot != 100 {
		t.Errorf("parseProcStat: idle %d total %d ok %v, want 74 100 true", i, tot, ok)
	}
}

// TestCompressingTakesACPUSlot shows that no more chunks compress at once
// than the codec has CPU slots, for every codec: with every slot taken, a
// compressible chunk waits (and is not stored as is while the store has
// writes in flight), and goes on once a slot is given back; an
// incompressible one needs no slot.
func TestCompressingTakesACPUSlot(t *testing.T) {
	data := textChunk(1 << 20)
	rnd := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(rnd)
	for _, comp := range []Compression{CompressionZstd, CompressionS2, CompressionLZ4, CompressionAutoS2, CompressionAuto} {
		t.Run(string(comp), func(t *testing.T) {
			c, err := newCodec(comp, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			c.cpus, c.slots = 1, make(chan struct{}, 1)
			c.writes.Add(idleWrites) // the store is busy: auto waits too
			if comp != CompressionLZ4 {
				// LZ4 has no separate sample: it compresses under
				// the slot, so random data waits as well.
				if enc := c.encode(nil, rnd); enc[len(enc)-chunkTrailerSize] != codecRaw {
					t.Fatal("random chunk compressed")
				}
			}
			c.slots <- struct{}{} // the one CPU is taken
			done := make(chan []byte, 1)
			go func() { done <- c.encode(nil, data) }()
			select {
			case <-done:
				t.Fatal("a chunk compressed with every CPU slot taken")
			case <-time.After(100 * time.Millisecond):
			}
			<-c.slots
			enc := <-done
			if enc[len(enc)-chunkTrailerSize] == codecRaw {
				t.Fatal("text chunk stored as is with the store busy")
			}
			if len(c.slots) != 0 {
				t.Fatalf("%d slots held after encoding, want 0", len(c.slots))
			}
		})
	}
}
