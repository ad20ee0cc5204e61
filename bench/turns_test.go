package bench

import (
	"slices"
	"testing"
)

// TestTurns: every round runs each contender once, and over as many rounds
// as there are contenders each runs first once.
func TestTurns(t *testing.T) {
	for n := 1; n <= 5; n++ {
		firsts := map[int]bool{}
		for round := 1; round <= n; round++ {
			order := turns(n, round)
			sorted := slices.Sorted(slices.Values(order))
			for k, v := range sorted {
				if v != k {
					t.Fatalf("turns(%d, %d) = %v: not each contender once", n, round, order)
				}
			}
			firsts[order[0]] = true
		}
		if len(firsts) != n {
			t.Fatalf("over %d rounds of %d, first were %v", n, n, firsts)
		}
	}
}
