package chunkstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

const (
	configName     = "config"
	chunkPrefix    = "chunks/"
	manifestPrefix = "manifests/"
	// maxManifest bounds a decoded manifest: 16 EiB volumes are not a goal,
	// 64 TiB of 64 KiB chunks is.
	maxManifest = 1 << 30
)

// ErrNoRepository is returned by Open when the store holds no config.
var ErrNoRepository = errors.New("no repository here (run repo init first)")

// ErrBackupExists is returned when a backup's id is taken in the
// repository: no backup replaces another.
var ErrBackupExists = errors.New("a backup with this id exists in the repository")

// ErrBadManifest is wrapped by LoadManifest when a manifest is stored but
// cannot be decoded (corrupt, truncated, of an unknown format): the
// manifest is at fault, not the store, so a listing names it and goes on.
var ErrBadManifest = errors.New("manifest unreadable")

// BadManifest names an unreadable manifest and says why.
type BadManifest struct {
	ID    string `json:"id"`
	Error string `json:"error"`
}

// ErrRepositoryExists is returned by Init when the store already holds one.
var ErrRepositoryExists = errors.New("a repository already exists here")

// InitOptions configures a new repository.
type InitOptions struct {
	ChunkSize   int         // default DefaultChunkSize
	Compression Compression // default CompressionAutoS2
	// Passphrase, if set, makes the repository encrypted (format 2): its
	// first key slot opens with it.
	Passphrase []byte
	// KDF are the costs of that slot's key derivation; zero means
	// DefaultKDF.
	KDF KDFParams
	// Format of a plain repository: FormatVersion (0 means it) or
	// FormatXXH64, which builds older than format 3 also read.
	Format int
}

// Repository is a chunk repository on a Store.
type Repository struct {
	store  Store
	cfg    Config
	hasher Hasher
	keys   *repoKeys // nil: not encrypted
	codec  *codec
	menc   *zstd.Encoder
	mdec   *zstd.Decoder
	bufs   sync.Pool // *[]byte of chunk size + header, for encoding
}

// Init creates a repository on store. It fails with ErrRepositoryExists if
// the store already has one.
func Init(ctx context.Context, store Store, opts InitOptions) (*Repository, error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.Compression == "" {
		opts.Compression = CompressionAutoS2
	}
	if _, err := store.Stat(ctx, configName); err == nil {
		return nil, fmt.Errorf("%s: %w", store.Location(), ErrRepositoryExists)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	if opts.Format == 0 {
		opts.Format = FormatVersion
	}
	if opts.Passphrase != nil && opts.Format != FormatVersion {
		return nil, fmt.Errorf("%s: format version %d is never encrypted", store.Location(), opts.Format)
	}
	cfg, err := newConfig(opts.Format, opts.ChunkSize, opts.Compression, time.Now())
	if err != nil {
		return nil, err
	}
	var keys *repoKeys
	var slot *KeySlot
	if opts.Passphrase != nil {
		if keys, slot, err = initEncryption(ctx, store, &cfg, opts); err != nil {
			return nil, err
		}
	}
	// The room garbage collection needs on a full repository, first: a
	// store too small for it is too small for backups.
	if err := putReserve(ctx, store); err != nil {
		return nil, err
	}
	b, err := jsonIndent(cfg)
	if err != nil {
		return nil, err
	}
	if c, ok := store.(Creator); ok {
		err := c.PutIfAbsent(ctx, configName, b)
		switch {
		case err == nil:
			return newRepository(store, cfg, keys)
		case errors.Is(err, ErrExists):
			if slot != nil { // another writer created it first: our slot opens nothing
				_ = store.Delete(ctx, keyPrefix+slot.ID)
			}
			return nil, fmt.Errorf("%s: %w", store.Location(), ErrRepositoryExists)
		case !errors.Is(err, errors.ErrUnsupported): // a wrapper over a store without it
			return nil, fmt.Errorf("%s: write config: %w", store.Location(), err)
		}
	}
	if err := store.Put(ctx, configName, b); err != nil {
		return nil, fmt.Errorf("%s: write config: %w", store.Location(), err)
	}
	if err := store.Sync(ctx); err != nil {
		return nil, fmt.Errorf("%s: sync config: %w", store.Location(), err)
	}
	return newRepository(store, cfg, keys)
}

// initEncryption makes cfg an encrypted repository's: a random master
// key, written wrapped under the passphrase before the config exists.
func initEncryption(ctx context.Context, store Store, cfg *Config, opts InitOptions) (*repoKeys, *KeySlot, error) {
	master := make([]byte, 32)
	if _, err := rand.Read(master); err != nil {
		return nil, nil, fmt.Errorf("random master key: %w", err)
	}
	keys, err := deriveKeys(master, cfg.ID)
	if err != nil {
		return nil, nil, err
	}
	cfg.Version = FormatEncrypted
	cfg.Seeds, cfg.Seed = [2]uint64{}, 0
	cfg.Encryption = &Encryption{Cipher: cipherAES256GCM, ChunkNames: namesBLAKE3, KDF: kdfArgon2id, KeyCheck: keys.check}
	p := opts.KDF
	if p == (KDFParams{}) {
		p = DefaultKDF
	}
	slot, b, err := newSlot(cfg.ID, master, opts.Passphrase, p)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	if err := putSlot(ctx, store, slot, b); err != nil {
		return nil, nil, err
	}
	keys.slotUsed = slot.ID
	return keys, slot, nil
}

// OpenOrInit opens the repository on store, creating one with opts if the
// store has none. Writers racing on an empty store that supports Creator
// all end up with the same config.
//
// An encrypted repository found is opened with pass, or with the
// passphrase opts would create one with.
func OpenOrInit(ctx context.Context, store Store, opts InitOptions, pass PassphraseFunc) (*Repository, error) {
	if pass == nil && opts.Passphrase != nil {
		pass = func() ([]byte, error) { return opts.Passphrase, nil }
	}
	r, err := OpenWithKey(ctx, store, pass)
	if !errors.Is(err, ErrNoRepository) {
		return r, err
	}
	r, err = Init(ctx, store, opts)
	if errors.Is(err, ErrRepositoryExists) {
		return OpenWithKey(ctx, store, pass)
	}
	return r, err
}

// Open opens the repository on store; an encrypted one is refused with
// ErrLocked.
func Open(ctx context.Context, store Store) (*Repository, error) {
	return OpenWithKey(ctx, store, nil)
}

// OpenWithKey opens the repository on store; if it is encrypted, pass
// supplies its passphrase (nil: ErrLocked).
func OpenWithKey(ctx context.Context, store Store, pass PassphraseFunc) (*Repository, error) {
	b, err := store.Get(ctx, configName)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", store.Location(), ErrNoRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read config: %w", store.Location(), err)
	}
	cfg, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	var keys *repoKeys
	if cfg.Encryption != nil {
		if pass == nil {
			return nil, fmt.Errorf("%s: %w", store.Location(), ErrLocked)
		}
		p, err := pass()
		if err != nil {
			return nil, fmt.Errorf("%s: passphrase: %w", store.Location(), err)
		}
		if keys, err = unlock(ctx, store, cfg, p); err != nil {
			return nil, err
		}
	}
	return newRepository(store, cfg, keys)
}

func newRepository(store Store, cfg Config, keys *repoKeys) (*Repository, error) {
	cd, err := newCodec(cfg.Compression, cfg.ChunkSize)
	if err != nil {
		return nil, err
	}
	menc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	mdec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxManifest))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	r := &Repository{
		store:  store,
		cfg:    cfg,
		hasher: hasherOf(cfg),
		keys:   keys,
		codec:  cd,
		menc:   menc,
		mdec:   mdec,
	}
	r.bufs.New = func() any {
		b := AlignedBuffer(0, scratchSize(cfg.ChunkSize))
		return &b
	}
	return r, nil
}

// hasherOf returns the key function of a plain repository's config.
func hasherOf(cfg Config) Hasher {
	if cfg.Version == FormatXXH3 {
		return Hasher{Seed1: cfg.Seed, XXH3: true}
	}
	return Hasher{Seed1: cfg.Seeds[0], Seed2: cfg.Seeds[1]}
}

// Close releases the codec state and closes the store.
func (r *Repository) Close() error {
	r.codec.enc.Close()
	r.codec.dec.Close()
	r.menc.Close()
	r.mdec.Close()
	return r.store.Close()
}

// Config returns the repository's config.
func (r *Repository) Config() Config { return r.cfg }

// ChunkSize returns the repository's fixed chunk size.
func (r *Repository) ChunkSize() int { return r.cfg.ChunkSize }

// Store returns the store the repository lives on.
func (r *Repository) Store() Store { return r.store }

// Location names the repository's store for messages.
func (r *Repository) Location() string { return r.store.Location() }

// Key returns the content key of data under this repository's seeds.
// In an encrypted repository it is a keyed MAC (see repoKeys.chunkKey).
func (r *Repository) Key(data []byte) Key {
	if r.keys != nil {
		return r.keys.chunkKey(data)
	}
	return r.hasher.Key(data)
}

// minObject is the size a stored chunk exceeds: its trailer, and its seal
// when encrypted.
func (r *Repository) minObject() int64 {
	if r.keys != nil {
		return int64(chunkTrailerSize + sealOverhead)
	}
	return chunkTrailerSize
}

// HasChunk reports whether the chunk is stored. A stored object too short to
// be a chunk (a leftover of a crash on a filesystem that lost it) counts as
// missing, so the next backup that needs it writes it again.
func (r *Repository) HasChunk(ctx context.Context, k Key) (bool, error) {
	info, err := r.store.Stat(ctx, chunkName(k))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", k, err)
	}
	return info.Size > r.minObject(), nil
}

// NewChunkBuffer returns a buffer of chunk size for reading chunks into.
// PutChunk stores data held in such a buffer without copying it: the
// buffer is page-aligned (for O_DIRECT) and has the spare capacity
// (chunkSpare) PutChunk needs to add the chunk trailer in place: with
// less, every chunk stored as it is (the random half of a volume) is
// copied once more, 9% of a backup's CPU time.
func (r *Repository) NewChunkBuffer() []byte {
	return AlignedBuffer(r.cfg.ChunkSize, r.cfg.ChunkSize+chunkSpare)
}

// PutChunk encodes data and stores it as chunk k, which must be data's key.
// It returns the number of encoded bytes written. If data has at least
// chunkSpare bytes of spare capacity (as slices of NewChunkBuffer do),
// PutChunk may write the chunk trailer there.
func (r *Repository) PutChunk(ctx context.Context, k Key, data []byte) (int, error) {
	if len(data) == 0 || len(data) > r.cfg.ChunkSize {
		return 0, fmt.Errorf("chunk %s: length %d outside 1..%d", k, len(data), r.cfg.ChunkSize)
	}
	bp := r.bufs.Get().(*[]byte)
	defer r.bufs.Put(bp)
	enc := r.codec.compress(*bp, data)
	scratch := enc != nil // enc is ours to overwrite
	switch {
	case enc != nil:
		if cap(enc) <= cap(*bp) {
			*bp = enc[:0]
		}
	case cap(data)-len(data) >= chunkSpare:
		enc = appendTrailer(data, codecRaw, len(data)) // in place, no copy
	default:
		enc = appendTrailer(append((*bp)[:0], data...), codecRaw, len(data))
	}
	if r.keys != nil {
		// Sealed in place in our scratch; never over the caller's data
		// (the cipher writes every byte once either way).
		dst := (*bp)[:0]
		if scratch {
			dst = enc[:0]
		}
		var err error
		if enc, err = seal(r.keys.chunks, dst, enc, chunkAD(k)); err != nil {
			return 0, fmt.Errorf("put chunk %s: %w", k, err)
		}
	}
	r.codec.writes.Add(1)
	err := r.store.Put(ctx, chunkName(k), enc)
	r.codec.writes.Add(-1)
	if err != nil {
		return 0, fmt.Errorf("put chunk %s: %w", k, err)
	}
	return len(enc), nil
}

// RepairChunk rewrites chunk k from data, which must have k's content
// (a live volume that still holds it): a corrupt stored copy is replaced,
// durably.
func (r *Repository) RepairChunk(ctx context.Context, k Key, data []byte) error {
	if r.Key(data) != k {
		return fmt.Errorf("chunk %s: the data given has another content", k)
	}
	if _, err := r.PutChunk(ctx, k, data); err != nil {
		return err
	}
	return r.Sync(ctx)
}

// GetChunk reads chunk k, checks its content against k and returns it in
// dst's storage if dst can hold it, else in new storage. A dst of
// NewChunkBuffer's capacity takes the stored object itself: a chunk
// stored as is then comes back where the store read it, with no copy and
// no allocation, and a compressed one is decoded into it from a scratch
// buffer.
func (r *Repository) GetChunk(ctx context.Context, k Key, dst []byte) ([]byte, error) {
	if k.IsZero() {
		return nil, fmt.Errorf("chunk %s: zero chunks are not stored", k)
	}
	var bp *[]byte // a scratch buffer from r.bufs, if taken
	defer func() {
		if bp != nil {
			r.bufs.Put(bp)
		}
	}()
	scratch := func() []byte {
		if bp == nil {
			bp = r.bufs.Get().(*[]byte)
		}
		return (*bp)[:0]
	}
	into := dst[:0]
	if dst != nil && cap(dst) < r.cfg.ChunkSize+chunkSpare {
		into = scratch() // too small for the object: read beside it
	}
	enc, err := GetBuffer(ctx, r.store, chunkName(k), into)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", k, err)
	}
	if r.keys != nil {
		if enc, err = unseal(r.keys.chunks, enc, chunkAD(k)); err != nil {
			return nil, &CorruptChunkError{Key: k, Reason: err.Error()}
		}
	}
	if sameStart(enc, dst) && !storedAsIs(enc) {
		// Compressed, in the storage it is to be decoded into: move it
		// to scratch first (it is smaller than the chunk).
		enc = append(scratch(), enc...)
	}
	out, err := r.codec.decode(r.Key, k, dst, enc)
	if err != nil {
		return nil, err
	}
	if bp != nil && sameStart(out, *bp) {
		// Stored as is and read into scratch: it goes back to the pool.
		if cap(dst) >= len(out) {
			return dst[:copy(dst[:len(out)], out)], nil
		}
		return bytes.Clone(out), nil
	}
	return out, nil
}

// sameStart reports whether a and b start at the same byte: a store, the
// cipher and the codec return what they read into a buffer from its
// start, so this tells whether a result is in that buffer.
func sameStart(a, b []byte) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0]
}

// DeleteChunk removes chunk k.
func (r *Repository) DeleteChunk(ctx context.Context, k Key) error {
	if err := r.store.Delete(ctx, chunkName(k)); err != nil {
		return fmt.Errorf("chunk %s: %w", k, err)
	}
	return nil
}

// ListChunks calls fn for every stored chunk.
func (r *Repository) ListChunks(ctx context.Context, fn func(Key, int64) error) error {
	return r.store.List(ctx, chunkPrefix, func(info Info) error {
		i := strings.LastIndexByte(info.Name, '/')
		k, err := ParseKey(info.Name[i+1:])
		if err != nil {
			return nil // not a chunk; leave foreign objects alone
		}
		return fn(k, info.Size)
	})
}

// Sync makes every chunk put so far durable.
func (r *Repository) Sync(ctx context.Context) error {
	if err := r.store.Sync(ctx); err != nil {
		return fmt.Errorf("%s: sync: %w", r.store.Location(), err)
	}
	return nil
}

// SaveManifest makes every chunk durable, then writes m durably. Only after
// it returns is the backup complete.
func (r *Repository) SaveManifest(ctx context.Context, m *Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if m.ChunkSize != r.cfg.ChunkSize {
		return fmt.Errorf("manifest %s: chunk size %d, repository uses %d", m.ID, m.ChunkSize, r.cfg.ChunkSize)
	}
	if err := r.Sync(ctx); err != nil {
		return fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	b, err := encodeManifest(r.menc, m)
	if err != nil {
		return err
	}
	if r.keys != nil {
		if b, err = r.keys.sealManifest(m.ID, b); err != nil {
			return err
		}
	}
	// Created exclusively: a manifest never replaces another backup's,
	// whoever wrote that one (another daemon sharing the storage).
	err = errors.ErrUnsupported
	if c, ok := r.store.(Creator); ok {
		err = c.PutIfAbsent(ctx, manifestPrefix+m.ID, b)
	}
	if errors.Is(err, errors.ErrUnsupported) { // a store with no conditional create
		err = r.store.Put(ctx, manifestPrefix+m.ID, b)
	}
	if errors.Is(err, ErrExists) {
		return fmt.Errorf("manifest %s: %w", m.ID, ErrBackupExists)
	}
	if err != nil {
		return fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	if err := r.Sync(ctx); err != nil {
		return fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	return nil
}

// LoadManifest reads backup id's manifest.
func (r *Repository) LoadManifest(ctx context.Context, id string) (*Manifest, error) {
	if err := ValidID(id); err != nil {
		return nil, fmt.Errorf("backup %q: %w", id, err)
	}
	b, err := r.store.Get(ctx, manifestPrefix+id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("backup %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	if r.keys != nil {
		if b, err = r.keys.unsealManifest(id, b); err != nil {
			return nil, fmt.Errorf("backup %s: %w: %w", id, ErrBadManifest, err)
		}
	}
	m, err := decodeManifest(r.mdec, id, b)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w: %w", id, ErrBadManifest, err)
	}
	return m, nil
}

// BadManifestsError is the error of an operation that must read every
// manifest and found some unreadable.
func BadManifestsError(bad []BadManifest) error {
	names := make([]string, len(bad))
	for i, b := range bad {
		names[i] = b.ID
	}
	return fmt.Errorf("%d %w: %s", len(bad), ErrBadManifest, strings.Join(names, ", "))
}

// HasManifest reports whether backup id's manifest is stored.
func (r *Repository) HasManifest(ctx context.Context, id string) (bool, error) {
	if err := ValidID(id); err != nil {
		return false, fmt.Errorf("backup %q: %w", id, err)
	}
	_, err := r.store.Stat(ctx, manifestPrefix+id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("backup %s: %w", id, err)
	}
	return true, nil
}

// DeleteManifest removes backup id's manifest. Its chunks stay until a
// garbage collection finds no manifest that names them.
func (r *Repository) DeleteManifest(ctx context.Context, id string) error {
	if err := ValidID(id); err != nil {
		return fmt.Errorf("backup %q: %w", id, err)
	}
	if err := r.store.Delete(ctx, manifestPrefix+id); err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	return nil
}

// ListBackups returns the ids of all backups in the repository.
func (r *Repository) ListBackups(ctx context.Context) ([]string, error) {
	ids, _, err := r.listManifests(ctx)
	return ids, err
}

// listManifests lists the backups' ids and their manifests' stored sizes.
func (r *Repository) listManifests(ctx context.Context) ([]string, map[string]int64, error) {
	var ids []string
	sizes := map[string]int64{}
	err := r.store.List(ctx, manifestPrefix, func(info Info) error {
		id := strings.TrimPrefix(info.Name, manifestPrefix)
		if ValidID(id) == nil {
			ids = append(ids, id)
			sizes[id] = info.Size
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: list backups: %w", r.store.Location(), err)
	}
	return ids, sizes, nil
}
