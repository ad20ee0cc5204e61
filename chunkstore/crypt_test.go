package chunkstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/blake3"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
)

// testKDF keeps the tests quick; the costs are stored per slot, so the
// code paths are those of DefaultKDF.
var testKDF = chunkstore.KDFParams{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

func passOf(s string) chunkstore.PassphraseFunc {
	return func() ([]byte, error) { return []byte(s), nil }
}

func openLocal(t *testing.T, dir string, pass chunkstore.PassphraseFunc) (*chunkstore.Repository, error) {
	t.Helper()
	s, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return chunkstore.OpenWithKey(context.Background(), s, pass)
}

// TestEncryptedRepositoryRevealsNothing steals an encrypted repository (reads
// every file as an attacker who knows the content backed up would) and
// finds neither that content, nor a name computed from it, nor any
// manifest field.
func TestEncryptedRepositoryRevealsNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: 1 << 20, Passphrase: []byte("correct horse"), KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	const marker = "VOLBACK-PLAINTEXT-MARKER"
	text := bytes.Repeat([]byte(marker+" the guest's /etc/shadow lives here\n"), 1<<20/60) // compresses
	random := randomBytes(7, 1<<20)
	copy(random[1000:], marker) // stored as is
	contents := [][]byte{text, random}
	var keys []chunkstore.Key
	for _, c := range contents {
		k := r.Key(c)
		keys = append(keys, k)
		if _, err := r.PutChunk(ctx, k, c); err != nil {
			t.Fatal(err)
		}
	}
	const volume, name = "feedfacefeedfacefeedfacefeedface", "payroll-db-disk"
	m := &chunkstore.Manifest{Version: 1, ID: chunkstore.NewID(), VolumeID: volume, Size: 2 << 20, ChunkSize: 1 << 20,
		Mode: chunkstore.ModeFull, Meta: map[string]string{"name": name}, Chunks: keys}
	if err := r.SaveManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The backup index holds the manifest's fields too.
	if rep, err := r.GC(ctx, chunkstore.GCOptions{}); err != nil || !rep.IndexWritten {
		t.Fatalf("gc: %+v %v", rep, err)
	}
	if ms, _, st, err := r.Summaries(ctx, false); err != nil || st.FromIndex != 1 || ms[0].Meta["name"] != name {
		t.Fatalf("listing from the sealed index: %+v %v", st, err)
	}
	r.Close()

	// Names an attacker could compute from known content: unkeyed hashes,
	// and xxhash under any seed the format ever used by default.
	var guesses []string
	for _, c := range contents {
		sh := sha256.Sum256(c)
		bl := blake3.Sum256(c)
		var xx [16]byte
		binary.BigEndian.PutUint64(xx[:8], xxhash.Sum64(c))
		guesses = append(guesses, hex.EncodeToString(sh[:16]), hex.EncodeToString(bl[:16]), hex.EncodeToString(xx[:8]))
	}
	secrets := [][]byte{[]byte(marker), []byte(volume), []byte(name), []byte("payroll"), []byte(`"chunks"`), []byte("volumeId")}
	files := 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		rel, _ := filepath.Rel(dir, p)
		for _, g := range guesses {
			if strings.Contains(rel, g) {
				t.Errorf("object %s is named after a hash of its known content", rel)
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, sec := range secrets {
			if bytes.Contains(b, sec) {
				t.Errorf("%s holds %q in the clear", rel, sec)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 5 { // config, reserve, key, two chunks, manifest
		t.Fatalf("only %d files in the repository", files)
	}

	// The owner reads it all back.
	r, err = openLocal(t, dir, passOf("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Encrypted() || r.Config().Version != chunkstore.FormatEncrypted {
		t.Fatalf("config %+v: not an encrypted repository", r.Config())
	}
	got, err := r.LoadManifest(ctx, m.ID)
	if err != nil || got.Meta["name"] != name || got.VolumeID != volume {
		t.Fatalf("manifest back: %+v, %v", got, err)
	}
	for i, k := range keys {
		b, err := r.GetChunk(ctx, k, nil)
		if err != nil || !bytes.Equal(b, contents[i]) {
			t.Fatalf("chunk %d back: %v", i, err)
		}
	}
}

func TestEncryptedRepositoryKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := local.Open(dir)
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: 1 << 20, Passphrase: []byte("first"), KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Key(textBytes(1 << 20))
	if _, err := r.PutChunk(ctx, first, textBytes(1<<20)); err != nil {
		t.Fatal(err)
	}
	second, err := r.AddKey(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	r.Close()

	if _, err := openLocal(t, dir, nil); !errors.Is(err, chunkstore.ErrLocked) {
		t.Fatalf("open without a passphrase: %v, want ErrLocked", err)
	}
	if _, err := openLocal(t, dir, passOf("guess")); !errors.Is(err, chunkstore.ErrWrongPassphrase) || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("open with a wrong passphrase: %v, want ErrWrongPassphrase", err)
	}
	// Both keys open it, and a second host keyed by the other slot names
	// the same content alike: dedup across hosts sharing the key.
	r1, err := openLocal(t, dir, passOf("first"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := openLocal(t, dir, passOf("second"))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Key(textBytes(1<<20)) != first {
		t.Fatal("the same content gets another name under another key slot: no dedup between hosts")
	}
	if ok, err := r2.HasChunk(ctx, first); err != nil || !ok {
		t.Fatalf("host 2 does not see host 1's chunk: %v %v", ok, err)
	}
	slots, cur, err := r2.Keys(ctx)
	if err != nil || len(slots) != 2 || cur != second {
		t.Fatalf("keys: %d slots, current %s (want %s): %v", len(slots), cur, second, err)
	}
	if err := r2.RemoveKey(ctx, second); err == nil {
		t.Fatal("removed the key in use")
	}
	var firstID string
	for _, sl := range slots {
		if sl.ID != second {
			firstID = sl.ID
		}
	}
	if err := r2.RemoveKey(ctx, firstID); err != nil {
		t.Fatal(err)
	}
	r1.Close()
	r2.Close()
	if _, err := openLocal(t, dir, passOf("first")); !errors.Is(err, chunkstore.ErrWrongPassphrase) {
		t.Fatalf("revoked key still opens the repository: %v", err)
	}
	if r, err := openLocal(t, dir, passOf("second")); err != nil {
		t.Fatal(err)
	} else {
		r.Close()
	}
}

// TestEncryptedRepositoryTampering: a chunk changed, or moved under
// another chunk's name, is reported corrupt, never returned.
func TestEncryptedRepositoryTampering(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := local.Open(dir)
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{ChunkSize: 1 << 20, Passphrase: []byte("p"), KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, b := randomBytes(1, 1<<20), randomBytes(2, 1<<20)
	ka, kb := r.Key(a), r.Key(b)
	for _, c := range []struct {
		k chunkstore.Key
		d []byte
	}{{ka, a}, {kb, b}} {
		if _, err := r.PutChunk(ctx, c.k, c.d); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	path := func(k chunkstore.Key) string { return filepath.Join(dir, "chunks", k.String()[:2], k.String()) }
	// Moved: b's object under a's name.
	ob, _ := os.ReadFile(path(kb))
	if err := os.WriteFile(path(ka), ob, 0o600); err != nil {
		t.Fatal(err)
	}
	var ce *chunkstore.CorruptChunkError
	if _, err := r.GetChunk(ctx, ka, nil); !errors.As(err, &ce) {
		t.Fatalf("chunk moved under another name: %v, want a corrupt chunk", err)
	}
	// One bit flipped.
	ob[100] ^= 1
	if err := os.WriteFile(path(kb), ob, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetChunk(ctx, kb, nil); !errors.As(err, &ce) {
		t.Fatalf("flipped bit: %v, want a corrupt chunk", err)
	}
}
