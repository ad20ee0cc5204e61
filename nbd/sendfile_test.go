package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/nbd"
)

// fileBackend is an export over a file that offers its reads by sendfile
// (nbd.FileReader), as a live volume does.
type fileBackend struct {
	f    *os.File
	size int64
}

func (b *fileBackend) Size() int64 { return b.size }
func (b *fileBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := b.f.ReadAt(p, off)
	return err
}
func (b *fileBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	_, err := b.f.WriteAt(p, off)
	return err
}
func (b *fileBackend) Flush(context.Context) error                             { return b.f.Sync() }
func (b *fileBackend) Trim(context.Context, int64, int64, bool) error          { return nil }
func (b *fileBackend) Zero(context.Context, int64, int64, nbd.ZeroFlags) error { return nbd.ErrNotFast }
func (b *fileBackend) Cache(context.Context, int64, int64) error               { return nil }
func (b *fileBackend) MetaContexts() []string                                  { return nil }
func (b *fileBackend) BlockStatus(context.Context, string, int64, int64, func(int64, uint32) bool) error {
	return nil
}
func (b *fileBackend) ReadFile(context.Context, int64, int64) (*os.File, error) { return b.f, nil }

// TestSendfileReads: reads large enough for sendfile return the file's
// bytes at the right offsets, over a Unix socket and TCP, with simple and
// structured replies, interleaved with small (copied) reads and writes
// from many goroutines; a read the file cannot fill (it shrank under the
// export) breaks the connection rather than return short or wrong data.
func TestSendfileReads(t *testing.T) {
	const size = 16 << 20
	path := filepath.Join(t.TempDir(), "vol.raw")
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(7, 8))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := nbd.NewServer()
	srv.AddExport(&nbd.Export{Name: "vol", Backend: &fileBackend{f: f, size: size}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unixL, err := nbd.Listen("unix://" + filepath.Join(t.TempDir(), "nbd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	tcpL, err := nbd.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ctx, unixL) })
	wg.Go(func() { _ = srv.Serve(ctx, tcpL) })
	defer wg.Wait()
	defer cancel()

	var mu sync.Mutex // guards data against the writers below
	for _, tc := range []struct {
		network, addr string
		structured    bool
	}{
		{"unix", unixL.Addr().String(), false},
		{"unix", unixL.Addr().String(), true},
		{"tcp", tcpL.Addr().String(), true},
	} {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := nbd.Dial(dctx, tc.network, tc.addr, "vol", nbd.ClientOptions{Structured: tc.structured})
		dcancel()
		if err != nil {
			t.Fatal(err)
		}
		var g sync.WaitGroup
		for w := range 8 {
			g.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 9))
				for range 40 {
					n := []int{4 << 10, 64 << 10, 256 << 10, 1 << 20, 3<<20 + 512}[r.IntN(5)]
					off := r.Int64N(size - int64(n) + 1)
					if w == 0 {
						// One goroutine writes, in its own region, what
						// later reads must see.
						off = r.Int64N(1<<20-int64(n)/4) &^ 511
						p := make([]byte, n/4)
						for i := range p {
							p[i] = byte(r.Uint32())
						}
						if err := c.WriteAt(ctx, p, off, false); err != nil {
							t.Errorf("write: %v", err)
							return
						}
						mu.Lock()
						copy(data[off:], p)
						mu.Unlock()
						got := make([]byte, 1<<20)
						if err := c.ReadAt(ctx, got, 0); err != nil {
							t.Errorf("read after write: %v", err)
							return
						}
						mu.Lock()
						ok := bytes.Equal(got, data[:1<<20])
						mu.Unlock()
						if !ok {
							t.Errorf("%s structured=%v: read after a write returned other bytes", tc.network, tc.structured)
						}
						continue
					}
					off = max(off, 1<<20) // away from the writer's region
					if off+int64(n) > size {
						continue
					}
					got := make([]byte, n)
					if err := c.ReadAt(ctx, got, off); err != nil {
						t.Errorf("read %d at %d: %v", n, off, err)
						return
					}
					if !bytes.Equal(got, data[off:off+int64(n)]) {
						t.Errorf("%s structured=%v: read %d at %d returned other bytes", tc.network, tc.structured, n, off)
						return
					}
				}
			})
		}
		g.Wait()
		c.Close()
	}

	// The file shrinks under the export: a read of the lost tail cannot be
	// completed once its header is out, so the connection ends.
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := nbd.Dial(dctx, "unix", unixL.Addr().String(), "vol", nbd.ClientOptions{})
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := f.Truncate(size - 1<<20); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	got := make([]byte, 2<<20)
	if err := c.ReadAt(rctx, got, size-2<<20); err == nil {
		t.Fatal("a read past the end of the shrunk file succeeded")
	}
}
