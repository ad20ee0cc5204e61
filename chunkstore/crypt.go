package chunkstore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/argon2"
)

// FormatEncrypted is the config version of an encrypted repository
// (docs/FORMAT.md, version 2).
const FormatEncrypted = 2

// The algorithms of format 2, named in its config.
const (
	cipherAES256GCM = "aes-256-gcm"
	namesBLAKE3     = "blake3-keyed-128"
	kdfArgon2id     = "argon2id"
)

// Sealed object layout (format 2): the plaintext sealed in place, its
// 16-byte tag, the 24-byte random nonce, the magic. The first 12 nonce
// bytes pick a per-object key (HMAC-SHA256 of the sealing key), the last
// 12 are AES-GCM's nonce: 192 random bits per object, so the 2^32-message
// bound of random 96-bit GCM nonces under one key never applies.
const (
	sealMagic     = "VBE2"
	sealNonceSize = 24
	sealOverhead  = 16 + sealNonceSize + len(sealMagic)
	// chunkSpare is the spare capacity a chunk buffer keeps for the
	// trailer and, encrypted, the seal, so either is added in place.
	chunkSpare = 64
)

const keyPrefix = "keys/"

// ErrLocked is returned when a repository is encrypted and no passphrase
// was given to open it.
var ErrLocked = errors.New("repository is encrypted: a passphrase is needed (--password-file or VOLBACK_PASSWORD)")

// ErrWrongPassphrase is returned when no key slot of an encrypted
// repository opens with the passphrase given.
var ErrWrongPassphrase = errors.New("wrong passphrase: no key of the repository opens with it")

// PassphraseFunc supplies the passphrase of an encrypted repository; it is
// called only when the repository turns out to be encrypted, so a terminal
// prompt is shown only when needed.
type PassphraseFunc func() ([]byte, error)

// Encryption is what an encrypted repository's config says of its
// algorithms and of its master key.
type Encryption struct {
	Cipher     string `json:"cipher"`
	ChunkNames string `json:"chunkNames"`
	KDF        string `json:"kdf"`
	// KeyCheck is derived from the master key (one way): a key slot whose
	// unwrapped key does not give it belongs to no key of this repository
	// (the leftover of a lost race to create it).
	KeyCheck []byte `json:"keyCheck"`
}

// KDFParams are argon2id's costs for one key slot.
type KDFParams struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memoryKiB"`
	Threads   uint8  `json:"threads"`
}

// DefaultKDF costs about a tenth of a second and 64 MiB per try on a
// current core: cheap once per command, dear for a guesser.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 64 << 10, Threads: 2}

// Bounds on a slot's stored costs, so a tampered slot cannot make opening
// take all memory or forever.
const (
	maxKDFMemoryKiB = 4 << 20
	maxKDFTime      = 64
)

// KeySlot is one way into an encrypted repository: the master key wrapped
// under a key derived from one passphrase. Stored as keys/<id>.
type KeySlot struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Host    string    `json:"host,omitempty"`
	KDF     string    `json:"kdf"`
	KDFParams
	Salt    []byte `json:"salt"`
	Wrapped []byte `json:"wrapped"` // 12-byte nonce, then AES-256-GCM of the master key
}

// repoKeys are the keys a master key gives, each for one purpose.
type repoKeys struct {
	names    []byte    // BLAKE3 key of chunk names
	namers   sync.Pool // *blake3.Hasher keyed with names
	chunks   []byte    // sealing key of chunks
	meta     []byte    // sealing key of manifests
	check    []byte    // KeyCheck
	master   []byte
	slotUsed string // the slot the repository was opened with
}

func deriveKeys(master []byte, repoID string) (*repoKeys, error) {
	k := &repoKeys{master: master}
	for _, d := range []struct {
		dst  *[]byte
		info string
	}{{&k.names, "volback v2 chunk names"}, {&k.chunks, "volback v2 chunks"}, {&k.meta, "volback v2 manifests"}, {&k.check, "volback v2 key check"}} {
		b, err := hkdf.Key(sha256.New, master, []byte(repoID), d.info, 32)
		if err != nil {
			return nil, fmt.Errorf("derive keys: %w", err)
		}
		*d.dst = b
	}
	return k, nil
}

// chunkKey is the name of a chunk in an encrypted repository: BLAKE3 keyed
// with a key only holders of the master key have, truncated to 128 bits.
// Without it, the name of a known content cannot be computed.
//
// The hasher hashes on the calling goroutine only: the backup's workers
// already keep every CPU busy, and a hasher that fans out into goroutines
// of its own pays for their scheduling on every chunk.
func (k *repoKeys) chunkKey(data []byte) Key {
	h, _ := k.namers.Get().(*blake3.Hasher)
	if h == nil {
		var err error
		if h, err = blake3.NewKeyed(k.names); err != nil {
			panic("blake3: " + err.Error()) // only for a key not 32 bytes long
		}
	}
	_, _ = h.Write(data)
	var sum [32]byte
	h.Sum(sum[:0])
	h.Reset()
	k.namers.Put(h)
	var out Key
	copy(out[:], sum[:16])
	if out.IsZero() {
		out[15] = 1
	}
	return out
}

// objectAEAD is the AEAD of one sealed object, under a key drawn from
// sealing key and the nonce's first half.
func objectAEAD(key, nonce []byte) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, key)
	m.Write(nonce[:12])
	blk, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// seal encrypts and authenticates p, binding it to ad, appending to dst,
// which is p[:0] (sealed in place) or a buffer that does not overlap p.
func seal(key []byte, dst, p []byte, ad []byte) ([]byte, error) {
	var nonce [sealNonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("seal: random nonce: %w", err)
	}
	aead, err := objectAEAD(key, nonce[:])
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := aead.Seal(dst, nonce[12:], p, ad)
	out = append(out, nonce[:]...)
	return append(out, sealMagic...), nil
}

// unseal checks and decrypts b in place.
func unseal(key []byte, b []byte, ad []byte) ([]byte, error) {
	if len(b) < sealOverhead || string(b[len(b)-len(sealMagic):]) != sealMagic {
		return nil, errors.New("not a sealed object")
	}
	nonce := b[len(b)-sealNonceSize-len(sealMagic) : len(b)-len(sealMagic)]
	ct := b[:len(b)-sealNonceSize-len(sealMagic)]
	aead, err := objectAEAD(key, nonce)
	if err != nil {
		return nil, err
	}
	p, err := aead.Open(ct[:0], nonce[12:], ct, ad)
	if err != nil {
		return nil, errors.New("authentication failed (tampered with, or sealed under another key)")
	}
	return p, nil
}

func chunkAD(k Key) []byte        { return append([]byte("volback chunk "), k[:]...) }
func manifestAD(id string) []byte { return []byte("volback manifest " + id) }
func slotAD(repoID, slotID string) []byte {
	return []byte("volback key " + repoID + " " + slotID)
}

func kek(pass []byte, salt []byte, p KDFParams) []byte {
	return argon2.IDKey(pass, salt, p.Time, p.MemoryKiB, p.Threads, 32)
}

// newSlot wraps master under pass.
func newSlot(repoID string, master, pass []byte, p KDFParams) (*KeySlot, []byte, error) {
	if len(pass) == 0 {
		return nil, nil, errors.New("empty passphrase")
	}
	s := &KeySlot{ID: NewID()[:16], Created: time.Now().UTC(), KDF: kdfArgon2id, KDFParams: p, Salt: make([]byte, 16)}
	s.Host, _ = os.Hostname()
	if _, err := rand.Read(s.Salt); err != nil {
		return nil, nil, fmt.Errorf("random salt: %w", err)
	}
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, fmt.Errorf("random nonce: %w", err)
	}
	blk, err := aes.NewCipher(kek(pass, s.Salt, p))
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, nil, err
	}
	s.Wrapped = aead.Seal(nonce, nonce, master, slotAD(repoID, s.ID))
	b, err := jsonIndent(s)
	return s, b, err
}

// unwrap opens slot s with pass; it returns nil if pass is not its.
func (s *KeySlot) unwrap(repoID string, pass []byte) []byte {
	if s.KDF != kdfArgon2id || s.Time == 0 || s.Time > maxKDFTime || s.MemoryKiB == 0 || s.MemoryKiB > maxKDFMemoryKiB || s.Threads == 0 || len(s.Wrapped) < 12+16 {
		return nil
	}
	blk, err := aes.NewCipher(kek(pass, s.Salt, s.KDFParams))
	if err != nil {
		return nil
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil
	}
	master, err := aead.Open(nil, s.Wrapped[:12], s.Wrapped[12:], slotAD(repoID, s.ID))
	if err != nil {
		return nil
	}
	return master
}

// unwrapped remembers the master keys slots gave in this process, by
// repository, slot and a hash of the passphrase: a daemon opens a
// repository for every job, and paying the memory-hard derivation each
// time (64 MiB, a tenth of a second) would make parallel jobs dear. A
// slot is looked up in the store every time, so a revoked one no longer
// opens, cache or not.
var unwrapped sync.Map // [32]byte -> []byte

func unwrapCached(s *KeySlot, repoID string, pass []byte) []byte {
	h := sha256.New()
	h.Write([]byte(repoID + "\x00" + s.ID + "\x00"))
	h.Write(s.Salt)
	h.Write(s.Wrapped)
	h.Write(pass)
	var id [32]byte
	h.Sum(id[:0])
	if m, ok := unwrapped.Load(id); ok {
		return m.([]byte)
	}
	master := s.unwrap(repoID, pass)
	if master != nil {
		unwrapped.Store(id, master)
	}
	return master
}

// unlock finds the slot pass opens and derives the repository's keys.
func unlock(ctx context.Context, store Store, cfg Config, pass []byte) (*repoKeys, error) {
	slots, err := listSlots(ctx, store)
	if err != nil {
		return nil, err
	}
	for _, s := range slots {
		master := unwrapCached(s, cfg.ID, pass)
		if master == nil {
			continue
		}
		k, err := deriveKeys(master, cfg.ID)
		if err != nil {
			return nil, err
		}
		if subtle.ConstantTimeCompare(k.check, cfg.Encryption.KeyCheck) != 1 {
			continue // a slot of a master key that lost the race to create the repository
		}
		k.slotUsed = s.ID
		return k, nil
	}
	return nil, fmt.Errorf("%s: %w (%d key slots tried)", store.Location(), ErrWrongPassphrase, len(slots))
}

func listSlots(ctx context.Context, store Store) ([]*KeySlot, error) {
	var names []string
	if err := store.List(ctx, keyPrefix, func(info Info) error {
		names = append(names, info.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("%s: list keys: %w", store.Location(), err)
	}
	var slots []*KeySlot
	for _, n := range names {
		b, err := store.Get(ctx, n)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: read %s: %w", store.Location(), n, err)
		}
		var s KeySlot
		if json.Unmarshal(b, &s) != nil || keyPrefix+s.ID != n {
			continue // not a key slot: it opens nothing
		}
		slots = append(slots, &s)
	}
	return slots, nil
}

func putSlot(ctx context.Context, store Store, s *KeySlot, b []byte) error {
	name := keyPrefix + s.ID
	var err error = errors.ErrUnsupported
	if c, ok := store.(Creator); ok {
		err = c.PutIfAbsent(ctx, name, b)
	}
	if errors.Is(err, errors.ErrUnsupported) {
		err = store.Put(ctx, name, b)
	}
	if err != nil {
		return fmt.Errorf("%s: write key %s: %w", store.Location(), s.ID, err)
	}
	if err := store.Sync(ctx); err != nil {
		return fmt.Errorf("%s: sync key %s: %w", store.Location(), s.ID, err)
	}
	return nil
}

// Encrypted reports whether the repository is encrypted (format 2).
func (r *Repository) Encrypted() bool { return r.keys != nil }

// Keys lists the key slots of an encrypted repository; the one it was
// opened with is marked.
func (r *Repository) Keys(ctx context.Context) (slots []*KeySlot, current string, err error) {
	if r.keys == nil {
		return nil, "", errors.New("repository is not encrypted: it has no keys")
	}
	slots, err = listSlots(ctx, r.store)
	return slots, r.keys.slotUsed, err
}

// AddKey adds a key slot that opens the repository with pass; it returns
// the new slot's id.
func (r *Repository) AddKey(ctx context.Context, pass []byte) (string, error) {
	if r.keys == nil {
		return "", errors.New("repository is not encrypted: it takes no keys")
	}
	s, b, err := newSlot(r.cfg.ID, r.keys.master, pass, DefaultKDF)
	if err != nil {
		return "", err
	}
	return s.ID, putSlot(ctx, r.store, s, b)
}

// RemoveKey revokes key slot id: its passphrase no longer opens the
// repository. The slot the repository was opened with, and the last one,
// cannot be removed.
func (r *Repository) RemoveKey(ctx context.Context, id string) error {
	slots, current, err := r.Keys(ctx)
	if err != nil {
		return err
	}
	if id == current {
		return fmt.Errorf("key %s: is the one in use; open the repository with another key to remove it", id)
	}
	found := false
	for _, s := range slots {
		found = found || s.ID == id
	}
	if !found || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	if err := r.store.Delete(ctx, keyPrefix+id); err != nil {
		return fmt.Errorf("key %s: %w", id, err)
	}
	return r.Sync(ctx)
}

// sealManifest wraps an encoded manifest for an encrypted repository.
func (k *repoKeys) sealManifest(id string, b []byte) ([]byte, error) {
	out, err := seal(k.meta, b[:0], b, manifestAD(id))
	if err != nil {
		return nil, err
	}
	return append([]byte(manifestMagicSealed), out...), nil
}

func (k *repoKeys) unsealManifest(id string, b []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, []byte(manifestMagicSealed)) {
		return nil, fmt.Errorf("manifest %s: not sealed (an encrypted repository holds only sealed manifests)", id)
	}
	p, err := unseal(k.meta, b[len(manifestMagicSealed):], manifestAD(id))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", id, err)
	}
	return p, nil
}

const manifestMagicSealed = "VBM2"
