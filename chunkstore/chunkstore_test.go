package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
)

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = r.Read(b)
	return b
}

func textBytes(n int) []byte {
	words := []string{"volume ", "backup ", "chunk ", "the ", "of ", "hypervisor ", "block ", "\n"}
	var b bytes.Buffer
	r := rand.New(rand.NewPCG(1, 2))
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

func newRepo(t *testing.T, c chunkstore.Compression) (*chunkstore.Repository, *mem.Store) {
	t.Helper()
	s := mem.New()
	r, err := chunkstore.Init(context.Background(), s, chunkstore.InitOptions{ChunkSize: 1 << 20, Compression: c})
	if err != nil {
		t.Fatal(err)
	}
	return r, s
}

func TestKeyDependsOnSeedsAndContent(t *testing.T) {
	t.Run("xxh64", func(t *testing.T) {
		testKey(t, chunkstore.Hasher{Seed1: 1, Seed2: 2}, chunkstore.Hasher{Seed1: 3, Seed2: 4})
	})
	t.Run("xxh3", func(t *testing.T) {
		testKey(t, chunkstore.Hasher{Seed1: 1, XXH3: true}, chunkstore.Hasher{Seed1: 3, XXH3: true})
	})
	// The two formats never give the same key to the same data under the
	// same seed: a key is only meaningful with its repository's format.
	data := randomBytes(2, 4096)
	if (chunkstore.Hasher{Seed1: 1, Seed2: 2}).Key(data) == (chunkstore.Hasher{Seed1: 1, Seed2: 2, XXH3: true}).Key(data) {
		t.Fatal("xxh64 and xxh3 keys agree")
	}
}

func testKey(t *testing.T, h1, h2 chunkstore.Hasher) {
	data := randomBytes(1, 4096)
	if h1.Key(data) != h1.Key(append([]byte(nil), data...)) {
		t.Fatal("same content, different keys")
	}
	if h1.Key(data) == h2.Key(data) {
		t.Fatal("different seeds, same key")
	}
	flipped := append([]byte(nil), data...)
	flipped[100] ^= 1
	if h1.Key(data) == h1.Key(flipped) {
		t.Fatal("one flipped bit, same key")
	}
	k := h1.Key(data)
	if k.IsZero() {
		t.Fatal("data hashed to the zero key")
	}
	back, err := chunkstore.ParseKey(k.String())
	if err != nil || back != k {
		t.Fatalf("ParseKey(String()): got %v %v, want %v", back, err, k)
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, s := range []string{"", "abc", strings.Repeat("g", 32), strings.Repeat("0", 32), strings.Repeat("a", 33)} {
		if _, err := chunkstore.ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) accepted", s)
		}
	}
	if k, err := chunkstore.ParseKey("zero"); err != nil || !k.IsZero() {
		t.Errorf(`ParseKey("zero"): got %v %v`, k, err)
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 100, 32 << 10, 32<<10 + 1, 4 << 20} {
		b := make([]byte, n)
		if !chunkstore.IsZero(b) {
			t.Fatalf("IsZero(zeros[%d]) = false", n)
		}
		for _, at := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			b[at] = 1
			if chunkstore.IsZero(b) {
				t.Fatalf("IsZero with byte %d of %d set = true", at, n)
			}
			b[at] = 0
		}
	}
}

func TestChunkRoundTripAndCompression(t *testing.T) {
	ctx := context.Background()
	for _, c := range []chunkstore.Compression{chunkstore.CompressionAutoS2, chunkstore.CompressionAuto, chunkstore.CompressionZstd, chunkstore.CompressionS2, chunkstore.CompressionLZ4, chunkstore.CompressionNone} {
		r, s := newRepo(t, c)
		cases := map[string][]byte{
			"random":   randomBytes(2, 1<<20),
			"text":     textBytes(1 << 20),
			"short":    []byte("x"),
			"tailtext": textBytes(1000),
		}
		for name, data := range cases {
			k := r.Key(data)
			n, err := r.PutChunk(ctx, k, data)
			if err != nil {
				t.Fatalf("%s/%s: PutChunk: %v", c, name, err)
			}
			if c != chunkstore.CompressionNone && name == "text" && n > len(data)/2 {
				t.Errorf("%s/%s: stored %d bytes of %d, want compression", c, name, n, len(data))
			}
			if name == "random" && n > len(data)+64 {
				t.Errorf("%s/%s: stored %d bytes of %d, want no growth", c, name, n, len(data))
			}
			ok, err := r.HasChunk(ctx, k)
			if err != nil || !ok {
				t.Fatalf("%s/%s: HasChunk = %v, %v", c, name, ok, err)
			}
			got, err := r.GetChunk(ctx, k, nil)
			if err != nil {
				t.Fatalf("%s/%s: GetChunk: %v", c, name, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%s/%s: round trip differs", c, name)
			}
		}
		_ = s
	}
}

func TestCorruptChunkDetected(t *testing.T) {
	ctx := context.Background()
	for _, data := range [][]byte{randomBytes(3, 1<<20), textBytes(1 << 20)} {
		r, s := newRepo(t, chunkstore.CompressionZstd)
		k := r.Key(data)
		if _, err := r.PutChunk(ctx, k, data); err != nil {
			t.Fatal(err)
		}
		name := "chunks/" + k.String()[:2] + "/" + k.String()
		for _, at := range []int{0, 4, 9, 20, 5000, -1} {
			s2 := mem.New()
			b, _ := s.Get(ctx, name)
			if at < 0 {
				at = len(b) - 1
			}
			_ = s2.Put(ctx, name, b)
			_ = s2.Corrupt(name, at)
			cfgb, _ := s.Get(ctx, "config")
			_ = s2.Put(ctx, "config", cfgb)
			r2, err := chunkstore.Open(ctx, s2)
			if err != nil {
				t.Fatal(err)
			}
			_, err = r2.GetChunk(ctx, k, nil)
			var ce *chunkstore.CorruptChunkError
			if !errors.As(err, &ce) || ce.Key != k {
				t.Fatalf("flip at %d: got %v, want CorruptChunkError for %s", at, err, k)
			}
			if !strings.Contains(err.Error(), k.String()) {
				t.Fatalf("error %q does not name the chunk", err)
			}
		}
	}
}

func TestShortChunkCountsAsMissing(t *testing.T) {
	ctx := context.Background()
	r, s := newRepo(t, chunkstore.CompressionZstd)
	data := randomBytes(4, 1000)
	k := r.Key(data)
	name := "chunks/" + k.String()[:2] + "/" + k.String()
	_ = s.Put(ctx, name, nil) // what a lost write leaves on some filesystems
	if ok, err := r.HasChunk(ctx, k); err != nil || ok {
		t.Fatalf("HasChunk on an empty object = %v, %v; want false", ok, err)
	}
}

func TestInitOpen(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	if _, err := chunkstore.Open(ctx, s); !errors.Is(err, chunkstore.ErrNoRepository) {
		t.Fatalf("Open empty: got %v, want ErrNoRepository", err)
	}
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.Config()
	if cfg.ChunkSize != chunkstore.DefaultChunkSize || cfg.Compression != chunkstore.CompressionAutoS2 || cfg.Version != chunkstore.FormatXXH3 || cfg.Seed == 0 || cfg.Seeds != [2]uint64{} {
		t.Fatalf("defaults: %+v", cfg)
	}
	if _, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{}); !errors.Is(err, chunkstore.ErrRepositoryExists) {
		t.Fatalf("second Init: got %v, want ErrRepositoryExists", err)
	}
	r2, err := chunkstore.Open(ctx, s)
	if err != nil || r2.Config() != cfg {
		t.Fatalf("Open: got %+v %v, want %+v", r2.Config(), err, cfg)
	}
	for _, bad := range []int{1000, 32 << 10, 32 << 20, 3 << 20} {
		if _, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: bad}); err == nil {
			t.Errorf("Init accepted chunk size %d", bad)
		}
	}
	if _, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{Compression: "brotli"}); err == nil {
		t.Errorf("Init accepted compression brotli")
	}
	for _, bad := range []chunkstore.InitOptions{{Format: 2}, {Format: 4}, {Format: -1}, {Format: chunkstore.FormatXXH64, Passphrase: []byte("pw")}} {
		if _, err := chunkstore.Init(ctx, mem.New(), bad); err == nil {
			t.Errorf("Init accepted %+v", bad)
		}
	}
}

// TestFormatOneRepository: a repository asked for in format 1 keys with
// two xxhash64 passes, keeps doing so when opened again, and its chunks
// round trip; the default format's keys differ on the same data.
func TestFormatOneRepository(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	r, err := chunkstore.Init(ctx, s, chunkstore.InitOptions{Format: chunkstore.FormatXXH64, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.Config()
	if cfg.Version != chunkstore.FormatXXH64 || cfg.Seed != 0 || cfg.Seeds[0] == cfg.Seeds[1] {
		t.Fatalf("format 1 config: %+v", cfg)
	}
	data := randomBytes(3, 1<<20)
	k := r.Key(data)
	if want := (chunkstore.Hasher{Seed1: cfg.Seeds[0], Seed2: cfg.Seeds[1]}).Key(data); k != want {
		t.Fatalf("format 1 key %v, want the xxhash64 pair %v", k, want)
	}
	if _, err := r.PutChunk(ctx, k, data); err != nil {
		t.Fatal(err)
	}
	r2, err := chunkstore.Open(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Key(data) != k {
		t.Fatal("reopened format 1 repository keys differently")
	}
	got, err := r2.GetChunk(ctx, k, nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("format 1 chunk round trip: %v", err)
	}
	r3, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c3 := r3.Config()
	if want := (chunkstore.Hasher{Seed1: c3.Seed, XXH3: true}).Key(data); r3.Key(data) != want {
		t.Fatalf("format 3 key %v, want XXH3-128 %v", r3.Key(data), want)
	}
}

func TestManifestSaveLoad(t *testing.T) {
	ctx := context.Background()
	r, s := newRepo(t, chunkstore.CompressionZstd)
	data := randomBytes(5, 1<<20)
	k := r.Key(data)
	if _, err := r.PutChunk(ctx, k, data); err != nil {
		t.Fatal(err)
	}
	m := &chunkstore.Manifest{
		Version: chunkstore.ManifestVersion, ID: chunkstore.NewID(), VolumeID: "vol1",
		Size: 3<<20 + 5, ChunkSize: 1 << 20, Mode: "full",
		Started: time.Unix(100, 0).UTC(), Finished: time.Unix(200, 0).UTC(),
		Chunks: []chunkstore.Key{k, chunkstore.ZeroKey, k, k},
		Meta:   map[string]string{"name": "backup-1"},
	}
	if err := r.SaveManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := r.LoadManifest(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Size != m.Size || len(got.Chunks) != 4 || got.Chunks[1] != chunkstore.ZeroKey || got.Chunks[2] != k || got.Meta["name"] != "backup-1" {
		t.Fatalf("LoadManifest: got %+v", got)
	}
	if got.ChunkLen(3) != 5 || got.ChunkLen(0) != 1<<20 {
		t.Fatalf("ChunkLen: %d %d", got.ChunkLen(3), got.ChunkLen(0))
	}
	ids, err := r.ListBackups(ctx)
	if err != nil || len(ids) != 1 || ids[0] != m.ID {
		t.Fatalf("ListBackups: %v %v", ids, err)
	}
	// A second backup under the same id never replaces the first.
	twin := *m
	twin.VolumeID = "vol2"
	if err := r.SaveManifest(ctx, &twin); !errors.Is(err, chunkstore.ErrBackupExists) {
		t.Fatalf("SaveManifest over a taken id: %v, want ErrBackupExists", err)
	}
	if got, _ := r.LoadManifest(ctx, m.ID); got == nil || got.VolumeID != "vol1" {
		t.Fatalf("the first backup was replaced: %+v", got)
	}
	// A manifest with the wrong number of chunks is refused.
	bad := *m
	bad.ID = chunkstore.NewID()
	bad.Chunks = bad.Chunks[:3]
	if err := r.SaveManifest(ctx, &bad); err == nil {
		t.Fatal("SaveManifest accepted a manifest with too few chunks")
	}
	// A corrupt manifest is an error naming the backup, never a panic.
	_ = s.Corrupt("manifests/"+m.ID, 20)
	if _, err := r.LoadManifest(ctx, m.ID); err == nil || !strings.Contains(err.Error(), m.ID) {
		t.Fatalf("corrupt manifest: got %v", err)
	}
	if _, err := r.LoadManifest(ctx, chunkstore.NewID()); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("missing manifest: got %v, want ErrNotFound", err)
	}
	if _, err := r.LoadManifest(ctx, "../config"); err == nil {
		t.Fatal("LoadManifest accepted a path as id")
	}
}

// putRecorder keeps the last chunk slice handed to Put.
type putRecorder struct {
	*mem.Store
	last []byte
}

func (p *putRecorder) Put(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, "chunks/") {
		p.last = data
	}
	return p.Store.Put(ctx, name, data)
}

// TestPutChunkStoresChunkBufferInPlace: a chunk that is stored as it is
// (incompressible, or compression off), read into NewChunkBuffer's
// buffer, reaches the store in that buffer, its trailer written into the
// spare capacity: a backup moves every such byte through no extra copy.
func TestPutChunkStoresChunkBufferInPlace(t *testing.T) {
	ctx := context.Background()
	for _, c := range []chunkstore.Compression{chunkstore.CompressionNone, chunkstore.CompressionAutoS2} {
		t.Run(string(c), func(t *testing.T) {
			rec := &putRecorder{Store: mem.New()}
			r, err := chunkstore.Init(ctx, rec, chunkstore.InitOptions{ChunkSize: 1 << 20, Compression: c})
			if err != nil {
				t.Fatal(err)
			}
			buf := r.NewChunkBuffer()
			if uintptr(unsafe.Pointer(&buf[0]))%4096 != 0 {
				t.Fatal("chunk buffer not page-aligned")
			}
			// A whole chunk, then a short last one.
			for i, data := range [][]byte{buf, buf[:len(buf)-4096]} {
				copy(data, randomBytes(uint64(7+i), len(data)))
				k := r.Key(data)
				if _, err := r.PutChunk(ctx, k, data); err != nil {
					t.Fatal(err)
				}
				if len(rec.last) <= len(data) || unsafe.SliceData(rec.last) != unsafe.SliceData(buf) {
					t.Fatalf("%d-byte chunk copied before it was stored (%d bytes at %p, buffer at %p)", len(data), len(rec.last), unsafe.SliceData(rec.last), unsafe.SliceData(buf))
				}
				got, err := r.GetChunk(ctx, k, nil)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%d-byte chunk reads back wrong (err %v)", len(data), err)
				}
			}
		})
	}
}

// inFlightStore records, in each chunk's Put, how many chunk writes its
// repository counts under way, and fails the puts it is told to.
type inFlightStore struct {
	*mem.Store
	r    *chunkstore.Repository
	seen []int32
	fail bool
}

func (s *inFlightStore) Put(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, "chunks/") {
		s.seen = append(s.seen, chunkstore.WritesInFlight(s.r))
		if s.fail {
			return errors.New("the disk is gone")
		}
	}
	return s.Store.Put(ctx, name, data)
}

// TestPutChunkCountsWritesInFlight: the count that tells the automatic
// compressions whether the store waits for chunks covers each chunk's
// write, and drops back when the write ends, failed or not.
func TestPutChunkCountsWritesInFlight(t *testing.T) {
	ctx := context.Background()
	st := &inFlightStore{Store: mem.New()}
	r, err := chunkstore.Init(ctx, st, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	st.r = r
	for i, fail := range []bool{false, true} {
		st.fail = fail
		data := randomBytes(uint64(20+i), 1<<20)
		_, err := r.PutChunk(ctx, r.Key(data), data)
		if fail != (err != nil) {
			t.Fatalf("put %d: %v", i, err)
		}
		if got := st.seen[len(st.seen)-1]; got != 1 {
			t.Fatalf("put %d: %d writes in flight during it, want 1", i, got)
		}
		if got := chunkstore.WritesInFlight(r); got != 0 {
			t.Fatalf("put %d: %d writes in flight after it, want 0", i, got)
		}
	}
}

// TestGetChunkReadsIntoTheBuffer checks GetChunk's buffer contract for
// every codec, plain and encrypted: into a NewChunkBuffer the chunk comes
// back in the buffer's storage without allocating a chunk's worth (a
// compressed one decoded from scratch, not over itself), into a small or
// nil buffer whole in storage of its own, and the content always checks.
func TestGetChunkReadsIntoTheBuffer(t *testing.T) {
	ctx := context.Background()
	for _, c := range []chunkstore.Compression{chunkstore.CompressionNone, chunkstore.CompressionZstd, chunkstore.CompressionS2, chunkstore.CompressionLZ4} {
		for _, sealed := range []bool{false, true} {
			name := string(c)
			opts := chunkstore.InitOptions{ChunkSize: 1 << 20, Compression: c}
			if sealed {
				name += "-sealed"
				opts.Passphrase, opts.KDF = []byte("p"), testKDF
			}
			t.Run(name, func(t *testing.T) {
				r, err := chunkstore.Init(ctx, mem.New(), opts)
				if err != nil {
					t.Fatal(err)
				}
				data := textBytes(1 << 20)
				if c == chunkstore.CompressionNone {
					data = randomBytes(3, 1<<20)
				}
				k := r.Key(data)
				if _, err := r.PutChunk(ctx, k, data); err != nil {
					t.Fatal(err)
				}
				buf := r.NewChunkBuffer()
				for i := range buf {
					buf[i] = 0xa5 // nothing of the chunk
				}
				got, err := r.GetChunk(ctx, k, buf)
				if err != nil {
					t.Fatalf("into a chunk buffer: %v", err)
				}
				if !bytes.Equal(got, data) {
					t.Fatal("into a chunk buffer: content differs")
				}
				if &got[0] != &buf[0] {
					t.Fatal("into a chunk buffer: the chunk came back in other storage")
				}
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				const reads = 64 // a GC may empty the scratch pool once or twice
				for range reads {
					if _, err := r.GetChunk(ctx, k, buf); err != nil {
						t.Fatal(err)
					}
				}
				runtime.ReadMemStats(&after)
				per := (after.TotalAlloc - before.TotalAlloc) / reads
				switch {
				case raceDetector && c != chunkstore.CompressionNone:
					// The race detector's pool drops scratch buffers
					// (a compressed chunk is decoded from one); a chunk
					// stored as is takes none and is checked below.
					t.Logf("race detector: %d bytes allocated a read, not checked", per)
				case per > 1<<20/8:
					t.Fatalf("each read into a chunk buffer allocated %d bytes", per)
				}
				for _, dst := range [][]byte{nil, make([]byte, 0, 100), make([]byte, 0, 1<<20)} {
					got, err := r.GetChunk(ctx, k, dst)
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("into a buffer of capacity %d: %d bytes, %v", cap(dst), len(got), err)
					}
					if cap(dst) >= len(data) && &got[0] != &dst[:1][0] {
						t.Fatalf("into a buffer of capacity %d: the chunk came back in other storage", cap(dst))
					}
				}
			})
		}
	}
}
