package chunkstore

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"time"
)

// FormatVersion is the repository format this code writes and reads.
const FormatVersion = 1

const (
	// MinChunkSize and MaxChunkSize bound a repository's chunk size.
	MinChunkSize = 64 << 10
	MaxChunkSize = 16 << 20
	// DefaultChunkSize matches Proxmox Backup Server's fixed chunks.
	DefaultChunkSize = 4 << 20
)

// Config is a repository's self-description, stored as the object "config".
// It never changes after Init.
type Config struct {
	Version     int         `json:"version"`
	ID          string      `json:"id"`
	ChunkSize   int         `json:"chunkSize"`
	Seeds       [2]uint64   `json:"seeds,omitzero"` // version 1 only
	Compression Compression `json:"compression"`
	Created     time.Time   `json:"created"`
	// Encryption is set in version 2 (encrypted) and only there.
	Encryption *Encryption `json:"encryption,omitempty"`
}

// ValidChunkSize checks that n is a power of two within the allowed range.
func ValidChunkSize(n int) error {
	if n < MinChunkSize || n > MaxChunkSize || bits.OnesCount(uint(n)) != 1 {
		return fmt.Errorf("invalid chunk size %d: want a power of two from 64 KiB to 16 MiB", n)
	}
	return nil
}

func newConfig(chunkSize int, c Compression, now time.Time) (Config, error) {
	if err := ValidChunkSize(chunkSize); err != nil {
		return Config{}, err
	}
	if _, err := ParseCompression(string(c)); err != nil {
		return Config{}, err
	}
	var seeds [16]byte
	if _, err := rand.Read(seeds[:]); err != nil {
		return Config{}, fmt.Errorf("random seeds: %w", err)
	}
	return Config{
		Version:     FormatVersion,
		ID:          NewID(),
		ChunkSize:   chunkSize,
		Seeds:       [2]uint64{binary.LittleEndian.Uint64(seeds[:8]), binary.LittleEndian.Uint64(seeds[8:])},
		Compression: c,
		Created:     now.UTC(),
	}, nil
}

func parseConfig(b []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("repository config: %w", err)
	}
	switch c.Version {
	case FormatVersion:
		if c.Encryption != nil {
			return c, fmt.Errorf("repository config: version 1 is never encrypted")
		}
		if c.Seeds[0] == c.Seeds[1] {
			return c, fmt.Errorf("repository config: the two seeds must differ")
		}
	case FormatEncrypted:
		e := c.Encryption
		if e == nil || e.Cipher != cipherAES256GCM || e.ChunkNames != namesBLAKE3 || e.KDF != kdfArgon2id || len(e.KeyCheck) != 32 {
			return c, fmt.Errorf("repository config: version 2 wants encryption %s, chunk names %s, kdf %s and a key check", cipherAES256GCM, namesBLAKE3, kdfArgon2id)
		}
	default:
		return c, fmt.Errorf("repository config: format version %d, this build reads %d and %d", c.Version, FormatVersion, FormatEncrypted)
	}
	if ValidID(c.ID) != nil {
		return c, fmt.Errorf("repository config: invalid id %q", c.ID)
	}
	if err := ValidChunkSize(c.ChunkSize); err != nil {
		return c, fmt.Errorf("repository config: %w", err)
	}
	if _, err := ParseCompression(string(c.Compression)); err != nil {
		return c, fmt.Errorf("repository config: %w", err)
	}
	return c, nil
}
