package chunkstore

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"time"
)

// Config versions (docs/FORMAT.md). A plain repository is made in
// FormatVersion unless InitOptions.Format asks for FormatXXH64; an
// encrypted one is FormatEncrypted. This build reads all three.
const (
	// FormatXXH64 keys chunks with xxhash64 under two seeds: the first
	// plain format, which every build reads.
	FormatXXH64 = 1
	// FormatXXH3 keys chunks with XXH3-128 under one seed: one pass over
	// the data instead of two, several times faster, read by builds from
	// this one on.
	FormatXXH3 = 3
	// FormatVersion is the plain format Init writes by default.
	FormatVersion = FormatXXH3
)

// ManifestVersion is the manifest format, the same in every config
// version.
const ManifestVersion = 1

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
	Seed        uint64      `json:"seed,omitzero"`  // version 3 only
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

func newConfig(format, chunkSize int, c Compression, now time.Time) (Config, error) {
	if format != FormatXXH64 && format != FormatXXH3 {
		return Config{}, fmt.Errorf("format version %d: a plain repository is format %d or %d", format, FormatXXH64, FormatXXH3)
	}
	if err := ValidChunkSize(chunkSize); err != nil {
		return Config{}, err
	}
	if _, err := ParseCompression(string(c)); err != nil {
		return Config{}, err
	}
	cfg := Config{Version: format, ID: NewID(), ChunkSize: chunkSize, Compression: c, Created: now.UTC()}
	// Draw until the seeds are valid for the format (distinct, nonzero):
	// once in all but a 2^-64 chance.
	var seeds [16]byte
	for {
		if _, err := rand.Read(seeds[:]); err != nil {
			return Config{}, fmt.Errorf("random seeds: %w", err)
		}
		a, b := binary.LittleEndian.Uint64(seeds[:8]), binary.LittleEndian.Uint64(seeds[8:])
		switch {
		case format == FormatXXH64 && a != b:
			cfg.Seeds = [2]uint64{a, b}
			return cfg, nil
		case format == FormatXXH3 && a != 0:
			cfg.Seed = a
			return cfg, nil
		}
	}
}

func parseConfig(b []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("repository config: %w", err)
	}
	switch c.Version {
	case FormatXXH64:
		if c.Encryption != nil || c.Seed != 0 {
			return c, fmt.Errorf("repository config: version 1 is never encrypted and has two seeds")
		}
		if c.Seeds[0] == c.Seeds[1] {
			return c, fmt.Errorf("repository config: the two seeds must differ")
		}
	case FormatXXH3:
		if c.Encryption != nil || c.Seeds != [2]uint64{} {
			return c, fmt.Errorf("repository config: version 3 is never encrypted and has one seed")
		}
		if c.Seed == 0 {
			return c, fmt.Errorf("repository config: version 3 wants a nonzero seed")
		}
	case FormatEncrypted:
		if c.Seeds != [2]uint64{} || c.Seed != 0 {
			return c, fmt.Errorf("repository config: version 2 has no seeds")
		}
		e := c.Encryption
		if e == nil || e.Cipher != cipherAES256GCM || e.ChunkNames != namesBLAKE3 || e.KDF != kdfArgon2id || len(e.KeyCheck) != 32 {
			return c, fmt.Errorf("repository config: version 2 wants encryption %s, chunk names %s, kdf %s and a key check", cipherAES256GCM, namesBLAKE3, kdfArgon2id)
		}
	default:
		return c, fmt.Errorf("repository config: format version %d, this build reads %d, %d and %d", c.Version, FormatXXH64, FormatEncrypted, FormatXXH3)
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
