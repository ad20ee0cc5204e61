package chunkstore

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/xxh3"
)

// Key identifies a chunk by its content: in a format 3 repository XXH3-128
// of the chunk under the repository's seed, in format 1 xxhash64 under its
// first seed, then under its second, big-endian either way (docs/FORMAT.md).
// The zero Key stands for an all-zero chunk, which is never stored.
type Key [16]byte

// ZeroKey marks an all-zero chunk in a manifest.
var ZeroKey Key

const zeroKeyText = "zero"

// IsZero reports whether k marks an all-zero chunk.
func (k Key) IsZero() bool { return k == ZeroKey }

// String returns the key as 32 lowercase hex digits, or "zero".
func (k Key) String() string {
	if k.IsZero() {
		return zeroKeyText
	}
	return hex.EncodeToString(k[:])
}

// MarshalText implements encoding.TextMarshaler.
func (k Key) MarshalText() ([]byte, error) {
	if k.IsZero() {
		return []byte(zeroKeyText), nil
	}
	b := make([]byte, 32)
	hex.Encode(b, k[:])
	return b, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Key) UnmarshalText(b []byte) error {
	v, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// ParseKey parses the output of Key.String.
func ParseKey(s string) (Key, error) {
	var k Key
	if s == zeroKeyText {
		return k, nil
	}
	if len(s) != 32 {
		return k, fmt.Errorf("invalid chunk key %q: want 32 hex digits", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'F' {
			return k, fmt.Errorf("invalid chunk key %q: want lowercase hex", s)
		}
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, fmt.Errorf("invalid chunk key %q: %w", s, err)
	}
	if k.IsZero() {
		return k, fmt.Errorf("invalid chunk key %q: all-zero key is reserved", s)
	}
	return k, nil
}

// chunkName is the object name of a chunk: sharded by its first byte so no
// directory (or S3 prefix) holds more than 1/256 of the chunks.
func chunkName(k Key) string {
	h := k.String()
	return chunkPrefix + h[:2] + "/" + h
}

// Hasher computes chunk keys with a repository's seeds. It is a value type
// and safe for concurrent use. XXH3 set: XXH3-128 under Seed1 (format 3);
// else two xxhash64 passes under Seed1 and Seed2 (format 1).
type Hasher struct {
	Seed1, Seed2 uint64
	XXH3         bool
}

// Key returns the content key of data. It never returns ZeroKey for data
// that is not all zeros (the chance is 2^-128, and the result is remapped).
func (h Hasher) Key(data []byte) Key {
	if h.XXH3 {
		k := Key(xxh3.Hash128Seed(data, h.Seed1).Bytes())
		if k.IsZero() {
			k[15] = 1
		}
		return k
	}
	var d xxhash.Digest
	d.ResetWithSeed(h.Seed1)
	_, _ = d.Write(data)
	a := d.Sum64()
	d.ResetWithSeed(h.Seed2)
	_, _ = d.Write(data)
	b := d.Sum64()
	var k Key
	binary.BigEndian.PutUint64(k[:8], a)
	binary.BigEndian.PutUint64(k[8:], b)
	if k.IsZero() {
		k[15] = 1
	}
	return k
}
