package nbd

import (
	"io"
	"testing"
)

// BenchmarkPipelinedWrites measures the server's per-request cost: 4 KiB
// writes pipelined 32 deep on one connection into an in-memory backend.
func BenchmarkPipelinedWrites(b *testing.B) {
	t := &testing.T{}
	_, sock, _ := startServer(t, 64<<20)
	cl := dial(t, sock)
	cl.goExport("vol")
	payload := make([]byte, 4096)
	var batch []byte
	const depth = 32
	for i := range depth {
		batch = append(batch, AppendRequest(nil, Request{Type: CmdWrite, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096})...)
		batch = append(batch, payload...)
	}
	b.SetBytes(depth * 4096)
	var hdr [16]byte
	for b.Loop() {
		if _, err := cl.c.Write(batch); err != nil {
			b.Fatal(err)
		}
		for range depth {
			if _, err := io.ReadFull(cl.r, hdr[:]); err != nil {
				b.Fatal(err)
			}
		}
	}
}
