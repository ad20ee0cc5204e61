package chunkstore

import (
	"bytes"
	"reflect"
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
	// Every codec decodes every codec's chunks; LZ4's and S2's encoders
	// too.
	l, err := newCodec(CompressionLZ4, MinChunkSize)
	if err != nil {
		f.Fatal(err)
	}
	s, err := newCodec(CompressionS2, MinChunkSize)
	if err != nil {
		f.Fatal(err)
	}
	h := Hasher{Seed1: 1, Seed2: 2}
	for _, data := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("ab"), 5000)} {
		f.Add(c.encode(nil, data), data)
		f.Add(l.encode(nil, data), data)
		f.Add(s.encode(nil, data), data)
	}
	f.Fuzz(func(t *testing.T, enc, orig []byte) {
		if len(orig) == 0 || len(orig) > MinChunkSize {
			return
		}
		k := h.Key(orig)
		out, err := c.decode(h.Key, k, nil, enc)
		if err == nil && !bytes.Equal(out, orig) {
			t.Fatalf("decoded wrong data without error")
		}
		// Encoding then decoding must always round-trip.
		for _, cd := range []*codec{c, l, s} {
			out, err = cd.decode(h.Key, k, nil, cd.encode(nil, orig))
			if err != nil || !bytes.Equal(out, orig) {
				t.Fatalf("%s round trip failed: %v", cd.compression, err)
			}
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	r, err := newRepository(nil, Config{ChunkSize: MinChunkSize, Compression: CompressionZstd, Seeds: [2]uint64{1, 2}}, nil)
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
		// Whatever decodes encodes back to a manifest that decodes to
		// the same thing: nothing it accepted is lost or changed.
		enc, err := encodeManifest(r.menc, m)
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		again, err := decodeManifest(r.mdec, id, enc)
		if err != nil {
			t.Fatalf("a re-encoded manifest does not decode: %v", err)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip changed the manifest:\n%+v\n%+v", m, again)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"id":"x","chunkSize":4194304,"seeds":[1,2],"compression":"zstd"}`))
	f.Add([]byte(`{"version":3,"id":"0123456789abcdef0123456789abcdef","chunkSize":4194304,"seed":7,"compression":"auto-s2"}`))
	f.Add([]byte(`{"version":3,"id":"0123456789abcdef0123456789abcdef","chunkSize":4194304,"seeds":[1,2],"compression":"auto-s2"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			return
		}
		// A config that parses writes out as one that parses to the
		// same config (the bytes repository writers store).
		out, err := jsonIndent(c)
		if err != nil {
			t.Fatalf("a parsed config does not encode: %v", err)
		}
		again, err := parseConfig(out)
		if err != nil {
			t.Fatalf("a re-encoded config does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, again)
		}
	})
}
