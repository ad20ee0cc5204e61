package nbd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fileWriterBackend is an export over a file that takes large writes by
// splice (FileWriter), as a live volume does. failBefore makes WriteFile
// fail before it calls fill; readOnly hands fill a file it cannot write.
type fileWriterBackend struct {
	f, ro      *os.File
	size       int64
	failBefore atomic.Bool
	readOnly   atomic.Bool
	fills      atomic.Int64
}

func (b *fileWriterBackend) Size() int64 { return b.size }
func (b *fileWriterBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := b.f.ReadAt(p, off)
	return err
}
func (b *fileWriterBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	_, err := b.f.WriteAt(p, off)
	return err
}
func (b *fileWriterBackend) WriteFile(_ context.Context, off, length int64, _ bool, fill func(*os.File) error) error {
	if b.failBefore.Load() {
		return syscall.EIO
	}
	b.fills.Add(1)
	if b.readOnly.Load() {
		return fill(b.ro)
	}
	return fill(b.f)
}
func (b *fileWriterBackend) Flush(context.Context) error                         { return b.f.Sync() }
func (b *fileWriterBackend) Trim(context.Context, int64, int64, bool) error      { return nil }
func (b *fileWriterBackend) Zero(context.Context, int64, int64, ZeroFlags) error { return ErrNotFast }
func (b *fileWriterBackend) Cache(context.Context, int64, int64) error           { return nil }
func (b *fileWriterBackend) MetaContexts() []string                              { return nil }
func (b *fileWriterBackend) BlockStatus(context.Context, string, int64, int64, func(int64, uint32) bool) error {
	return nil
}

func startFileWriterServer(t *testing.T, size int64) (*Server, *fileWriterBackend, []net.Listener) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.raw")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); ro.Close() })
	be := &fileWriterBackend{f: f, ro: ro, size: size}
	srv := NewServer()
	srv.AddExport(&Export{Name: "vol", Backend: be})
	srv.AddExport(&Export{Name: "ro", Backend: be, ReadOnly: true})
	ctx, cancel := context.WithCancel(context.Background())
	unixL, err := Listen("unix://" + filepath.Join(t.TempDir(), "nbd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	tcpL, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	for _, l := range []net.Listener{unixL, tcpL} {
		go func() { srv.Serve(ctx, l); done <- struct{}{} }()
	}
	t.Cleanup(func() { cancel(); <-done; <-done })
	return srv, be, []net.Listener{unixL, tcpL}
}

func dialListener(t *testing.T, l net.Listener) *client {
	t.Helper()
	c, err := net.Dial(l.Addr().Network(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return handshake(t, c)
}

// TestSplicedWrites: one pipelined stream of writes around the splice
// threshold and the read buffer's size, with small writes and flushes
// between them so large payloads start both in the read buffer and on
// the socket, lands exactly as written over a Unix socket and TCP, and
// the large ones go by splice.
func TestSplicedWrites(t *testing.T) {
	const size = 24 << 20
	srv, be, ls := startFileWriterServer(t, size)
	want := make([]byte, size)
	lengths := []int{1 << 20, 4096, 64<<10 - 1, 64 << 10, 64<<10 + 1, 28, 200 << 10, 512, 3 << 20, 100<<10 + 3, 1, 256 << 10, 256 << 10}
	off := 0
	for li, l := range ls {
		cl := dialListener(t, l)
		cl.goExport("vol")
		var stream []byte
		cookie := uint64(0)
		var large int64
		for round := range 2 {
			for i, n := range lengths {
				p := make([]byte, n)
				for k := range p {
					p[k] = byte(li*13 + round*31 + i*7 + k)
				}
				stream = append(stream, AppendRequest(nil, Request{Type: CmdWrite, Cookie: cookie, Offset: uint64(off), Length: uint32(n)})...)
				stream = append(stream, p...)
				copy(want[off:], p)
				if n >= spliceMin {
					large += int64(n)
				}
				cookie++
				if i%3 == 2 {
					stream = append(stream, AppendRequest(nil, Request{Type: CmdFlush, Cookie: cookie})...)
					cookie++
				}
				off += n + 4096
			}
		}
		before := srv.Stats.BytesSpliced.Load()
		go cl.c.Write(stream)
		answered := map[uint64]bool{}
		for range int(cookie) {
			e, c := cl.simpleReply()
			if e != 0 || answered[c] {
				t.Fatalf("%s: reply for cookie %d: err %v, answered before %v", l.Addr().Network(), c, e, answered[c])
			}
			answered[c] = true
		}
		if got := srv.Stats.BytesSpliced.Load() - before; got != large {
			t.Fatalf("%s: %d bytes spliced, want the %d of the writes of at least %d bytes", l.Addr().Network(), got, large, spliceMin)
		}
	}
	got, err := os.ReadFile(be.f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("the file differs from what was written, first at offset %d", i)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSplicedWriteFailures: a large write that is refused (read-only
// export, beyond the end, a flag it does not take), that fails before
// the backend takes it, or that the file fails part way, gets its error
// and its payload consumed: the next request on the connection is read
// in step and works.
func TestSplicedWriteFailures(t *testing.T) {
	const size = 8 << 20
	_, be, ls := startFileWriterServer(t, size)
	payload := bytes.Repeat([]byte("0123456789abcdef"), (256<<10)/16)
	inStep := func(cl *client, cookie uint64, what string) {
		t.Helper()
		// In step: a small write and a large one after it work.
		cl.request(Request{Type: CmdWrite, Cookie: cookie + 100, Offset: 4096, Length: 5}, []byte("hello"))
		if e, _ := cl.simpleReply(); e != 0 {
			t.Fatalf("%s: the next small write: %v", what, e)
		}
		cl.request(Request{Type: CmdWrite, Cookie: cookie + 200, Offset: 1 << 20, Length: uint32(len(payload))}, payload)
		if e, _ := cl.simpleReply(); e != 0 {
			t.Fatalf("%s: the next large write: %v", what, e)
		}
	}
	check := func(cl *client, cookie uint64, want Errno, what string) {
		t.Helper()
		if e, c := cl.simpleReply(); e != want || c != cookie {
			t.Fatalf("%s: %v cookie %d, want %v cookie %d", what, e, c, want, cookie)
		}
		inStep(cl, cookie, what)
	}
	for _, l := range ls {
		ro := dialListener(t, l)
		ro.goExport("ro")
		ro.request(Request{Type: CmdWrite, Cookie: 1, Length: uint32(len(payload))}, payload)
		if e, _ := ro.simpleReply(); e != EPERM {
			t.Fatalf("read-only export: %v, want EPERM", e)
		}
		cl := dialListener(t, l)
		cl.goExport("vol")
		cl.request(Request{Type: CmdWrite, Cookie: 2, Offset: size - 4096, Length: uint32(len(payload))}, payload)
		check(cl, 2, ENOSPC, "beyond the end")
		cl.request(Request{Type: CmdWrite, Flags: FlagNoHole, Cookie: 3, Length: uint32(len(payload))}, payload)
		check(cl, 3, EINVAL, "a flag writes do not take")

		be.failBefore.Store(true)
		fills := be.fills.Load()
		cl.request(Request{Type: CmdWrite, Cookie: 4, Length: uint32(len(payload))}, payload)
		if e, _ := cl.simpleReply(); e != EIO {
			t.Fatalf("backend failing before fill: %v, want EIO", e)
		}
		be.failBefore.Store(false)
		if be.fills.Load() != fills {
			t.Fatal("fill ran for a write the backend refused")
		}
		inStep(cl, 5, "after a refused fill")

		// The file refuses the bytes (opened read-only): EBADF from
		// the splice; what the pipe held is dropped with the pipe.
		be.readOnly.Store(true)
		cl.request(Request{Type: CmdWrite, Cookie: 6, Offset: 2 << 20, Length: uint32(len(payload))}, payload)
		if e, _ := cl.simpleReply(); e == 0 {
			t.Fatal("a write into a file that cannot take it succeeded")
		}
		be.readOnly.Store(false)
		inStep(cl, 7, "after a failed fill")
	}
	got := make([]byte, len(payload))
	if _, err := be.f.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("the large writes after the failures did not land: %v", err)
	}
}

// TestSpliceFallsBackToCopies: a file that takes no splices (EINVAL)
// gets the payload copied, this one and every later one, intact.
func TestSpliceFallsBackToCopies(t *testing.T) {
	const size = 8 << 20
	srv, be, ls := startFileWriterServer(t, size)
	var refused atomic.Int64
	spliceFile = func(int, *int64, int, *int64, int, int) (int64, error) {
		refused.Add(1)
		return 0, unix.EINVAL
	}
	t.Cleanup(func() { spliceFile = unix.Splice })
	cl := dialListener(t, ls[0])
	cl.goExport("vol")
	want := make([]byte, size)
	for i, n := range []int{256 << 10, 1 << 20, 64 << 10} {
		p := bytes.Repeat([]byte{byte(i + 1)}, n)
		off := i * (2 << 20)
		cl.request(Request{Type: CmdWrite, Cookie: uint64(i), Offset: uint64(off), Length: uint32(n)}, p)
		if e, _ := cl.simpleReply(); e != 0 {
			t.Fatalf("write %d: %v", i, e)
		}
		copy(want[off:], p)
	}
	if refused.Load() != 1 {
		t.Fatalf("the file was offered %d splices, want 1 (then copies)", refused.Load())
	}
	if srv.Stats.BytesSpliced.Load() == 0 {
		t.Fatal("the first write, taken from the socket by splice, is not counted")
	}
	got, _ := os.ReadFile(be.f.Name())
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("the file differs from what was written, first at offset %d", i)
	}
}
