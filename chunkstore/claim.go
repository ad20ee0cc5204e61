package chunkstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Exclusive creation without trusting the server's conditional put.
//
// Some S3 engines accept If-None-Match: * but check and write in two steps,
// so writers racing on one name are all told they created it (SeaweedFS
// did, seaweedfs/seaweedfs#8800). ClaimCreate builds the guarantee from
// what every engine does give: read-after-write consistent puts, lists and
// deletes. Each writer puts a claim object of its own, lists the claims of
// the name, and goes on only if it sees no other live claim; it then checks
// the name is still free, creates it, and only then removes its claim.
//
// Two writers cannot both go on: if W listed before L put its claim, then
// L's list comes after W's claim was put, so L sees it, unless W removed
// it, which W does only after creating the name, and L's check after its
// list then finds the name taken. Writers that see each other withdraw and
// retry after a random pause, so one of them soon goes on alone.
//
// Claims are named claims/HASH.TIME-TOKEN, HASH standing for the name
// (flat: no directory per name for a posix-backed gateway to make and
// remove under racing writers). One older than ClaimStale (by
// the reader's clock) belongs to a writer that died and is ignored; a
// writer gives up on its claim once ClaimTimeout has passed since it put
// it, so a live claim is never mistaken for a stale one unless the clocks
// of two hosts differ by more than ClaimStale-ClaimTimeout.
const claimPrefix = "claims/"

// Claim timing; variables so tests can shorten them.
var (
	ClaimTimeout  = time.Minute
	ClaimStale    = 15 * time.Minute
	claimAttempts = 16
	claimPause    = 20 * time.Millisecond
	claimMaxPause = 2 * time.Second
)

// ErrContended is returned (wrapped, transient) when ClaimCreate kept
// meeting other writers of the same name and gave up.
var ErrContended = errors.New("other writers keep claiming the same name")

// ClaimCreate creates name only if it does not exist and no other writer
// creates it at the same time: create is called at most once, when this
// writer holds the only live claim on name and name is still free. It
// returns ErrExists (wrapped) if name exists or another writer created it.
func ClaimCreate(ctx context.Context, st Store, name string, create func(ctx context.Context) error) error {
	if err := ValidName(name); err != nil {
		return err
	}
	dir := claimsOf(name)
	pause := claimPause
	for attempt := 0; attempt < claimAttempts; attempt++ {
		if attempt > 0 {
			// Full jitter: racers that met pick different pauses.
			d := time.Duration(mrand.Int64N(int64(pause))) + time.Millisecond
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
			pause = min(2*pause, claimMaxPause)
		}
		if _, err := st.Stat(ctx, name); err == nil {
			return fmt.Errorf("%s: %s: %w", st.Location(), name, ErrExists)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		mine, err := putClaim(ctx, st, dir)
		if err != nil {
			return err
		}
		started := time.Now()
		alone, err := onlyClaim(ctx, st, dir, mine)
		if err != nil {
			_ = st.Delete(context.WithoutCancel(ctx), mine)
			return err
		}
		if !alone {
			if err := st.Delete(ctx, mine); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			continue
		}
		err = func() error {
			if _, err := st.Stat(ctx, name); err == nil {
				return fmt.Errorf("%s: %s: %w", st.Location(), name, ErrExists)
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
			left := ClaimTimeout - time.Since(started)
			if left <= 0 {
				return Transient(fmt.Errorf("%s: claim on %s outlived %v before the create", st.Location(), name, ClaimTimeout))
			}
			cctx, cancel := context.WithTimeout(ctx, left)
			defer cancel()
			return create(cctx)
		}()
		// The claim goes only after the create: a writer that lists now
		// either sees it or finds the name taken.
		// A claim left behind (the delete failed) is only garbage: it
		// holds others back until it is stale, and GC removes it.
		_ = st.Delete(context.WithoutCancel(ctx), mine)
		return err
	}
	return Transient(fmt.Errorf("%s: %s: %w (%d attempts)", st.Location(), name, ErrContended, claimAttempts))
}

// claimsOf is the prefix of the claims on name.
func claimsOf(name string) string {
	h := sha256.Sum256([]byte(name))
	return claimPrefix + hex.EncodeToString(h[:16]) + "."
}

func putClaim(ctx context.Context, st Store, dir string) (string, error) {
	var tok [12]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return "", err
	}
	name := dir + strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + hex.EncodeToString(tok[:])
	if err := st.Put(ctx, name, nil); err != nil {
		return "", fmt.Errorf("claim: %w", err)
	}
	return name, nil
}

// onlyClaim reports whether mine is the only live claim in dir.
func onlyClaim(ctx context.Context, st Store, dir, mine string) (bool, error) {
	alone, seen := true, false
	now := time.Now()
	err := st.List(ctx, dir, func(info Info) error {
		if info.Name == mine {
			seen = true
			return nil
		}
		if t, ok := claimTime(info.Name); ok && now.Sub(t) > ClaimStale {
			return nil // its writer died
		}
		alone = false
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("list claims: %w", err)
	}
	if !seen {
		// The store did not list our own claim: it does not give the
		// consistency the protocol needs; refuse rather than guess.
		return false, fmt.Errorf("%s: claim %s not listed after it was put: the store's listing is not consistent", st.Location(), mine)
	}
	return alone, nil
}

// claimTime reads the time a claim was put from its name.
func claimTime(name string) (time.Time, bool) {
	base := name[strings.LastIndexByte(name, '/')+1:]
	base = base[strings.LastIndexByte(base, '.')+1:]
	ts, _, ok := strings.Cut(base, "-")
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// RemoveStaleClaims deletes claims older than ClaimStale (left by writers
// that died); garbage collection calls it.
func RemoveStaleClaims(ctx context.Context, st Store) (int, error) {
	var stale []string
	now := time.Now()
	if err := st.List(ctx, claimPrefix, func(info Info) error {
		if t, ok := claimTime(info.Name); ok && now.Sub(t) > ClaimStale {
			stale = append(stale, info.Name)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	n := 0
	for _, name := range stale {
		if err := st.Delete(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
			return n, err
		}
		n++
	}
	return n, nil
}
