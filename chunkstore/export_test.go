package chunkstore

import "time"

// ShortClaimPauses makes ClaimCreate give up fast (tests of contention);
// the returned func restores the defaults.
func ShortClaimPauses() func() {
	p, m := claimPause, claimMaxPause
	claimPause, claimMaxPause = time.Millisecond, 10*time.Millisecond
	return func() { claimPause, claimMaxPause = p, m }
}

// ClaimsOf is the prefix of the claims on name.
var ClaimsOf = claimsOf

// WritesInFlight is the count of r's chunk writes under way, which the
// automatic compressions read.
func WritesInFlight(r *Repository) int32 { return r.codec.writes.Load() }
