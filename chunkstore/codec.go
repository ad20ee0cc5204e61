package chunkstore

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Encoded chunk layout: the payload, then a 12-byte trailer (integers
// little-endian):
//
//	payload   the chunk as is, one zstd frame, one LZ4 block or one S2 block
//	+0  1     codec: 0 = stored as is, 1 = zstd, 2 = LZ4 (block format),
//	          3 = S2 (block format)
//	+1  3     reserved, zero
//	+4  4     length of the decoded chunk
//	+8  4     magic "VBC1"
//
// A trailer rather than a header lets a chunk that is stored as is be
// written straight from the buffer it was read into: the trailer is
// appended in the buffer's spare capacity, and the payload keeps the
// buffer's alignment, which O_DIRECT writes need.
const (
	chunkMagic       = "VBC1"
	chunkTrailerSize = 12
	codecRaw         = 0
	codecZstd        = 1
	codecLZ4         = 2
	codecS2          = 3
)

// Compression names a repository's chunk compression.
type Compression string

// Compressions: zstd (its fastest level) stores text in about a quarter of
// its size at some 200 MiB/s a core; S2 in about a third at three times
// that, and LZ4 in three eighths at twice that, for hosts whose backups are
// bound by the CPU. The automatic settings pick per chunk: zstd while the
// host's CPUs have room, the fast codec for the chunks that arrive while
// they have none, so a backup bound by the disk stores zstd's smaller
// chunks and one bound by the CPU is not held to zstd's speed. AutoS2 (the
// default for new repositories) falls back to S2; and when every CPU is
// compressing already while the store has almost nothing to write (it
// waits on the CPUs, not on the disk), a chunk of either is stored as is:
// the disk takes its extra bytes in less time than it would wait for a
// CPU. Auto, the default of
// repositories made before S2 was a codec, to LZ4, so that the builds
// that made them still read every chunk they hold (a build that does not
// know a setting refuses the repository rather than meet a codec it
// cannot decode). Every chunk records its codec, and this build reads all.
const (
	CompressionNone   Compression = "none"
	CompressionZstd   Compression = "zstd"
	CompressionLZ4    Compression = "lz4"
	CompressionS2     Compression = "s2"
	CompressionAuto   Compression = "auto"
	CompressionAutoS2 Compression = "auto-s2"
)

// ParseCompression validates a compression name.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case CompressionNone, CompressionZstd, CompressionLZ4, CompressionS2, CompressionAuto, CompressionAutoS2:
		return Compression(s), nil
	}
	return "", fmt.Errorf("unknown compression %q (want auto-s2, auto, zstd, s2, lz4 or none)", s)
}

// CorruptChunkError reports a chunk whose stored form does not decode to
// content matching its key.
type CorruptChunkError struct {
	Key    Key
	Reason string
}

func (e *CorruptChunkError) Error() string {
	return fmt.Sprintf("chunk %s is corrupt: %s", e.Key, e.Reason)
}

// codec encodes and decodes chunks. One codec is shared by all workers of a
// repository: zstd's EncodeAll and DecodeAll are safe for concurrent use and
// keep one state per concurrent caller, so memory is bounded by the number
// of workers, not the number of chunks.
type codec struct {
	compression Compression
	maxChunk    int
	enc         *zstd.Encoder
	dec         *zstd.Decoder
	lz4         sync.Pool // *lz4.Compressor: its hash table is one caller's
	// cpus, busy and room drive the automatic compressions: busy counts
	// the callers compressing or waiting to; past cpus, or while room
	// says the host's CPUs are all in use, there is no room for zstd.
	cpus int32
	busy atomic.Int32
	room func() bool
	// slots holds one token per CPU: compressing takes one, so no more
	// chunks compress at once than there are CPUs, and the workers past
	// them wait off the scheduler instead of taking turns on the CPUs
	// with the goroutines that issue the store's writes.
	slots chan struct{}
	// writes counts the store's writes in flight (Repository.PutChunk);
	// below idleWrites the store waits for chunks.
	writes atomic.Int32
}

// idleWrites is the number of writes in flight below which a store is
// taken to wait for chunks: a disk kept busy has one write completing
// and the next queued behind it.
const idleWrites = 2

func newCodec(c Compression, maxChunk int) (*codec, error) {
	cd := &codec{compression: c, maxChunk: maxChunk, cpus: int32(CPUs()), room: hostCPU.hasRoom}
	cd.slots = make(chan struct{}, cd.cpus)
	var err error
	// The fastest level: chunks are compressed on the backup's critical
	// path, and the random half of a typical volume does not compress at
	// any level. The window never needs to exceed one chunk.
	cd.enc, err = zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderCRC(false), // the chunk key already covers content
		zstd.WithWindowSize(windowFor(maxChunk)),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	cd.dec, err = zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(uint64(maxChunk)),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return cd, nil
}

func windowFor(maxChunk int) int {
	w := zstd.MinWindowSize
	for w < maxChunk && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}

// sampleSize is how much of a chunk is trial-compressed to decide whether
// compressing the whole chunk is worth its CPU time.
const sampleSize = 64 << 10

func appendTrailer(b []byte, c byte, n int) []byte {
	b = append(b, c, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	return append(b, chunkMagic...)
}

// compress returns data compressed with the repository's codec (auto: the
// one the CPU has room for now) followed by the trailer, appended to
// scratch[:0], or nil if compressing is off or not worth it. A 64 KiB
// sample is tried first, so incompressible chunks cost almost no
// compression time.
func (c *codec) compress(scratch, data []byte) []byte {
	switch c.compression {
	case CompressionLZ4:
		defer c.slot()()
		return c.compressLZ4(scratch, data)
	case CompressionS2:
		if !c.s2Sample(scratch, data) {
			return nil
		}
		defer c.slot()()
		return c.compressS2(scratch, data)
	case CompressionAuto, CompressionAutoS2:
		// S2's sample is the cheaper test of whether a chunk compresses
		// at all (the random half of a volume does not).
		if !c.s2Sample(scratch, data) {
			return nil
		}
		n := c.busy.Add(1)
		defer c.busy.Add(-1)
		if n > c.cpus && c.writes.Load() < idleWrites {
			// Every CPU compresses already and the store is about
			// to run dry: writing this chunk as it is now keeps
			// the disk and the CPUs working at once.
			return nil
		}
		defer c.slot()()
		switch {
		case n <= c.cpus && c.room():
			return c.compressZstd(scratch, data)
		case c.compression == CompressionAuto:
			return c.compressLZ4(scratch, data)
		}
		return c.compressS2(scratch, data)
	case CompressionZstd:
		if !c.worthCompressing(scratch, data) {
			return nil
		}
		defer c.slot()()
		return c.compressZstd(scratch, data)
	}
	return nil
}

// slot waits for a CPU's token and returns the func that gives it back.
func (c *codec) slot() func() {
	c.slots <- struct{}{}
	return func() { <-c.slots }
}

// compressZstd is compress for zstd, once a sample said data compresses.
func (c *codec) compressZstd(scratch, data []byte) []byte {
	out := c.enc.EncodeAll(data, scratch[:0])
	// Keep it only if it saves at least 1/64 of the chunk: decoding
	// costs time on every restore, so marginal savings are not worth it.
	if len(out) >= len(data)-len(data)/64 {
		return nil
	}
	return appendTrailer(out, codecZstd, len(data))
}

// compressLZ4 is compress for LZ4: the block must fit in what saving
// 1/64 of the chunk leaves, or the chunk is stored as is; a sample decides
// first for large chunks, as for zstd.
func (c *codec) compressLZ4(scratch, data []byte) []byte {
	lc, _ := c.lz4.Get().(*lz4.Compressor)
	if lc == nil {
		lc = new(lz4.Compressor)
	}
	defer c.lz4.Put(lc)
	if len(data) > 2*sampleSize {
		mid := len(data)/2 - sampleSize/2
		probe := scratch[:cap(scratch)]
		if len(probe) < sampleSize*7/8 {
			probe = make([]byte, sampleSize*7/8)
		}
		if n, err := lc.CompressBlock(data[mid:mid+sampleSize], probe[:sampleSize*7/8]); n == 0 || err != nil {
			return nil
		}
	}
	limit := len(data) - len(data)/64
	if cap(scratch) < limit+chunkTrailerSize {
		scratch = make([]byte, 0, limit+chunkTrailerSize)
	}
	n, err := lc.CompressBlock(data, scratch[:limit])
	if n == 0 || err != nil {
		return nil
	}
	return appendTrailer(scratch[:n], codecLZ4, len(data))
}

// scratchSize is the capacity of an encoding buffer for chunks of up to
// maxChunk bytes: the chunk and its trailer or seal, or S2's worst case,
// which its encoder needs as room even when the result is smaller.
func scratchSize(maxChunk int) int {
	return max(maxChunk, s2.MaxEncodedLen(maxChunk)+chunkTrailerSize) + chunkSpare
}

// s2Sample says whether data is worth compressing, from S2's result on a
// 64 KiB sample from its middle (short chunks are always tried).
func (c *codec) s2Sample(scratch, data []byte) bool {
	if len(data) <= 2*sampleSize {
		return true
	}
	mid := len(data)/2 - sampleSize/2
	probe := scratch[:0]
	if cap(probe) < s2.MaxEncodedLen(sampleSize) {
		probe = make([]byte, 0, s2.MaxEncodedLen(sampleSize))
	}
	return len(s2.Encode(probe[:cap(probe)], data[mid:mid+sampleSize])) < sampleSize*7/8
}

// compressS2 is compress for S2 (block format), once a sample said data
// compresses: the block must save 1/64 of the chunk.
func (c *codec) compressS2(scratch, data []byte) []byte {
	need := s2.MaxEncodedLen(len(data))
	if need < 0 {
		return nil
	}
	if cap(scratch) < need+chunkTrailerSize {
		scratch = make([]byte, 0, need+chunkTrailerSize)
	}
	out := s2.Encode(scratch[:need], data)
	if len(out) >= len(data)-len(data)/64 {
		return nil
	}
	return appendTrailer(out, codecS2, len(data))
}

// encode returns the encoded form of data in dst's storage (reallocated if
// too small). It copies; Repository.PutChunk avoids the copy where it can.
func (c *codec) encode(dst, data []byte) []byte {
	if out := c.compress(dst, data); out != nil {
		return out
	}
	return appendTrailer(append(dst[:0], data...), codecRaw, len(data))
}

func (c *codec) worthCompressing(scratch, data []byte) bool {
	if len(data) <= 2*sampleSize {
		return true
	}
	// Sample from the middle: file headers at the start of a chunk are
	// often more compressible than what follows.
	mid := len(data)/2 - sampleSize/2
	out := c.enc.EncodeAll(data[mid:mid+sampleSize], scratch[:0])
	return len(out) < sampleSize*7/8
}

// storedAsIs reports whether enc, an encoded chunk, holds its content as
// is (its trailer's codec byte, unchecked: decode checks the rest).
func storedAsIs(enc []byte) bool {
	return len(enc) >= chunkTrailerSize && enc[len(enc)-chunkTrailerSize] == codecRaw
}

// decode checks an encoded chunk and returns its content, verified to hash
// to key. A chunk stored as is is returned in enc's own storage; a
// compressed one is decoded into dst's storage (reallocated if too small).
func (c *codec) decode(keyOf func([]byte) Key, key Key, dst, enc []byte) ([]byte, error) {
	if len(enc) < chunkTrailerSize || string(enc[len(enc)-4:]) != chunkMagic {
		return nil, &CorruptChunkError{Key: key, Reason: "bad trailer"}
	}
	tr := enc[len(enc)-chunkTrailerSize:]
	if tr[1] != 0 || tr[2] != 0 || tr[3] != 0 {
		return nil, &CorruptChunkError{Key: key, Reason: "bad trailer"}
	}
	n := int(binary.LittleEndian.Uint32(tr[4:8]))
	if n == 0 || n > c.maxChunk {
		return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("impossible length %d", n)}
	}
	payload := enc[:len(enc)-chunkTrailerSize]
	var out []byte
	switch tr[0] {
	case codecRaw:
		if len(payload) != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("length %d, trailer says %d", len(payload), n)}
		}
		out = payload
	case codecZstd:
		if cap(dst) < n {
			dst = make([]byte, 0, n)
		}
		var err error
		out, err = c.dec.DecodeAll(payload, dst[:0:n])
		if err != nil {
			return nil, &CorruptChunkError{Key: key, Reason: "zstd: " + err.Error()}
		}
		if len(out) != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("decoded %d bytes, trailer says %d", len(out), n)}
		}
	case codecLZ4:
		if cap(dst) < n {
			dst = make([]byte, 0, n)
		}
		m, err := lz4.UncompressBlock(payload, dst[:n])
		if err != nil {
			return nil, &CorruptChunkError{Key: key, Reason: "lz4: " + err.Error()}
		}
		if m != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("decoded %d bytes, trailer says %d", m, n)}
		}
		out = dst[:n]
	case codecS2:
		if m, err := s2.DecodedLen(payload); err != nil || m != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("s2 block of %d bytes (%v), trailer says %d", m, err, n)}
		}
		if cap(dst) < n {
			dst = make([]byte, 0, n)
		}
		var err error
		if out, err = s2.Decode(dst[:n], payload); err != nil {
			return nil, &CorruptChunkError{Key: key, Reason: "s2: " + err.Error()}
		}
	default:
		return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("unknown codec %d", tr[0])}
	}
	if got := keyOf(out); got != key {
		return nil, &CorruptChunkError{Key: key, Reason: "content hashes to " + got.String()}
	}
	return out, nil
}
