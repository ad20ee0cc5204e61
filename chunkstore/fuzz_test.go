package chunkstore

import (
	"bytes"
	"testing"
)

func FuzzParseKey(f *testing.F) {
	f.Add("zero")
	f.Add("0123456789abcdef0123456789abcdef")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			return
		}
		if k.String() != s {
			t.Fatalf("ParseKey(%q).String() = %q", s, k.String())
		}
	})
}

// FuzzDecodeChunk feeds arbitrary bytes to the chunk decoder: it must return
// data matching the key or an error, never panic or over-allocate.
func FuzzDecodeChunk(f *testing.F) {
	c, err := newCodec(CompressionZstd, MinChunkSize)
	if err != nil {
		f.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	for _, data := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("ab"), 5000)} {
		f.Add(c.encode(nil, data), data)
	}
	f.Fuzz(func(t *testing.T, enc, orig []byte) {
		if len(orig) == 0 || len(orig) > MinChunkSize {
			return
		}
		k := h.Key(orig)
		out, err := c.decode(h, k, nil, enc)
		if err == nil && !bytes.Equal(out, orig) {
			t.Fatalf("decoded wrong data without error")
		}
		// Encoding then decoding must always round-trip.
		out, err = c.decode(h, k, nil, c.encode(nil, orig))
		if err != nil || !bytes.Equal(out, orig) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	r, err := newRepository(nil, Config{ChunkSize: MinChunkSize, Compression: CompressionZstd, Seeds: [2]uint64{1, 2}})
	if err != nil {
		f.Fatal(err)
	}
	id := "0123456789abcdef0123456789abcdef"
	good, _ := encodeManifest(r.menc, &Manifest{Version: 1, ID: id, Size: 70000, ChunkSize: MinChunkSize, Chunks: []Key{ZeroKey, {1}}})
	f.Add(good)
	f.Add([]byte("VBM1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeManifest(r.mdec, id, b)
		if err != nil {
			return
		}
		if m.Validate() != nil {
			t.Fatal("decodeManifest returned an invalid manifest")
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"id":"x","chunkSize":4194304,"seeds":[1,2],"compression":"zstd"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			return
		}
		if ValidChunkSize(c.ChunkSize) != nil || c.Seeds[0] == c.Seeds[1] {
			t.Fatalf("parseConfig accepted %+v", c)
		}
	})
}
