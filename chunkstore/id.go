package chunkstore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// NewID returns a random identifier in ZStack's UUID form: 32 lowercase hex
// digits, no dashes.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])  // crypto/rand.Read never fails on Linux
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return hex.EncodeToString(b[:])
}

// ValidID checks that id is 32 lowercase hex digits.
func ValidID(id string) error {
	if len(id) != 32 {
		return fmt.Errorf("invalid id %q: want 32 hex digits", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("invalid id %q: want 32 lowercase hex digits", id)
		}
	}
	return nil
}
