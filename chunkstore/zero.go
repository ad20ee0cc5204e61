package chunkstore

import "bytes"

// zeroBlock is compared against in windows: small enough to stay in L1/L2
// cache, large enough that bytes.Equal's vector loop dominates.
var zeroBlock [32 << 10]byte

// IsZero reports whether every byte of b is zero. It stops at the first
// non-zero window, so data chunks usually cost a few hundred bytes of
// comparison; only zero chunks are scanned in full, at memory bandwidth.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
