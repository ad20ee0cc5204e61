package chunkstore

import (
	"encoding/binary"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Encoded chunk layout (all integers little-endian):
//
//	0  4  magic "VBC1"
//	4  1  codec: 0 = stored as is, 1 = zstd
//	5  3  reserved, zero
//	8  4  length of the decoded chunk
//	12 .. payload
const (
	chunkMagic      = "VBC1"
	chunkHeaderSize = 12
	codecRaw        = 0
	codecZstd       = 1
)

// Compression names a repository's chunk compression.
type Compression string

const (
	CompressionNone Compression = "none"
	CompressionZstd Compression = "zstd"
)

// ParseCompression validates a compression name.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case CompressionNone, CompressionZstd:
		return Compression(s), nil
	}
	return "", fmt.Errorf("unknown compression %q (want zstd or none)", s)
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
}

func newCodec(c Compression, maxChunk int) (*codec, error) {
	cd := &codec{compression: c, maxChunk: maxChunk}
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

// encode appends the encoded form of data to dst[:0] and returns it. It
// compresses only when that makes the chunk smaller: a 64 KiB sample is
// tried first, so incompressible chunks cost almost no compression time.
func (c *codec) encode(dst, data []byte) []byte {
	dst = append(dst[:0], chunkMagic...)
	dst = append(dst, codecRaw, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(data)))
	if c.compression == CompressionZstd && c.worthCompressing(dst, data) {
		out := c.enc.EncodeAll(data, dst)
		// Keep it only if it saves at least 1/64 of the chunk: decoding
		// costs time on every restore, so marginal savings are not worth it.
		if len(out)-chunkHeaderSize < len(data)-len(data)/64 {
			out[4] = codecZstd
			return out
		}
		dst = out[:chunkHeaderSize]
	}
	return append(dst, data...)
}

func (c *codec) worthCompressing(scratch, data []byte) bool {
	if len(data) <= 2*sampleSize {
		return true
	}
	// Sample from the middle: file headers at the start of a chunk are
	// often more compressible than what follows.
	mid := len(data)/2 - sampleSize/2
	out := c.enc.EncodeAll(data[mid:mid+sampleSize], scratch[len(scratch):])
	return len(out) < sampleSize*7/8
}

// decode checks and decodes an encoded chunk into dst[:0], verifying that the
// content hashes to key.
func (c *codec) decode(h Hasher, key Key, dst, enc []byte) ([]byte, error) {
	if len(enc) < chunkHeaderSize || string(enc[:4]) != chunkMagic {
		return nil, &CorruptChunkError{Key: key, Reason: "bad header"}
	}
	if enc[5] != 0 || enc[6] != 0 || enc[7] != 0 {
		return nil, &CorruptChunkError{Key: key, Reason: "bad header"}
	}
	n := int(binary.LittleEndian.Uint32(enc[8:12]))
	if n == 0 || n > c.maxChunk {
		return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("impossible length %d", n)}
	}
	payload := enc[chunkHeaderSize:]
	if cap(dst) < n {
		dst = make([]byte, 0, n)
	}
	switch enc[4] {
	case codecRaw:
		if len(payload) != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("length %d, header says %d", len(payload), n)}
		}
		dst = append(dst[:0], payload...)
	case codecZstd:
		out, err := c.dec.DecodeAll(payload, dst[:0:n])
		if err != nil {
			return nil, &CorruptChunkError{Key: key, Reason: "zstd: " + err.Error()}
		}
		if len(out) != n {
			return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("decoded %d bytes, header says %d", len(out), n)}
		}
		dst = out
	default:
		return nil, &CorruptChunkError{Key: key, Reason: fmt.Sprintf("unknown codec %d", enc[4])}
	}
	if got := h.Key(dst); got != key {
		return nil, &CorruptChunkError{Key: key, Reason: "content hashes to " + got.String()}
	}
	return dst, nil
}
