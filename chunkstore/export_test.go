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
