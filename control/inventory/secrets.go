package inventory

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Password hashes are stored in the PHC string form of argon2id,
// "$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH", with OWASP's minimum costs
// for argon2id (19 MiB, two passes): about 30 ms a login here, and logins
// are throttled besides (control's loginGuard).
const (
	pwTime    = 2
	pwMemory  = 19 << 10
	pwThreads = 1
	pwKeyLen  = 32
)

var b64 = base64.RawStdEncoding

func hashSecret(secret string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("random salt: %w", err)
	}
	h := argon2.IDKey([]byte(secret), salt, pwTime, pwMemory, pwThreads, pwKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, pwMemory, pwTime, pwThreads, b64.EncodeToString(salt), b64.EncodeToString(h)), nil
}

// checkSecret reports whether secret matches stored; legacy is set when
// stored is an older build's plain SHA-512 hex, to be rehashed.
func checkSecret(stored, secret string) (ok, legacy bool) {
	if !strings.HasPrefix(stored, "$argon2id$") {
		return subtle.ConstantTimeCompare([]byte(stored), []byte(secret)) == 1, true
	}
	parts := strings.Split(stored, "$")
	if len(parts) != 6 {
		return false, false
	}
	var v int
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<20 || t == 0 || t > 16 || p == 0 {
		return false, false
	}
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false, false
	}
	got := argon2.IDKey([]byte(secret), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, false
}

// sessionKey is what the database keeps of a session id: its SHA-256. A
// session id is 128 random bits, so a fast hash is enough to make the
// stored form useless to whoever reads the file.
func sessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}
