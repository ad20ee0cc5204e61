package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// memBackend is a small in-memory Backend for protocol tests; interop with
// real clients is tested against real volumes in cmd/volback.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	flushes int
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }
func (m *memBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}
func (m *memBackend) Flush(context.Context) error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}
func (m *memBackend) Trim(context.Context, int64, int64, bool) error { return nil }
func (m *memBackend) Zero(_ context.Context, off, n int64, f ZeroFlags) error {
	if f.Fast {
		return ErrNotFast
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memBackend) Cache(context.Context, int64, int64) error { return nil }
func (m *memBackend) MetaContexts() []string                    { return []string{MetaBaseAllocation} }
func (m *memBackend) BlockStatus(_ context.Context, _ string, off, n int64, fn func(int64, uint32) bool) error {
	fn(n, 0)
	return nil
}

func startServer(t *testing.T, size int) (*Server, string, *memBackend) {
	t.Helper()
	srv := NewServer()
	be := &memBackend{data: make([]byte, size)}
	srv.AddExport(&Export{Name: "vol", Backend: be})
	srv.AddExport(&Export{Name: "ro", Backend: be, ReadOnly: true})
	sock := t.TempDir() + "/nbd.sock"
	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv, sock, be
}

// client is a minimal raw NBD client for driving the server with requests
// that well-behaved libraries refuse to send.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, sock string) *client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return handshake(t, c)
}

// handshake greets the server on c as a fixed-newstyle client.
func handshake(t *testing.T, c net.Conn) *client {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, r: bufio.NewReader(c)}
	var greet [18]byte
	cl.read(greet[:])
	if binary.BigEndian.Uint64(greet[:]) != initPasswd || binary.BigEndian.Uint64(greet[8:]) != optMagic {
		t.Fatalf("bad greeting % x", greet)
	}
	cl.write(binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZeroes))
	return cl
}

func (cl *client) read(b []byte) {
	cl.t.Helper()
	if _, err := io.ReadFull(cl.r, b); err != nil {
		cl.t.Fatalf("read: %v", err)
	}
}

func (cl *client) write(b []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

func (cl *client) option(opt uint32, data []byte) {
	cl.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	cl.write(append(b, data...))
}

// optReply reads one option reply: its type and data.
func (cl *client) optReply() (uint32, []byte) {
	cl.t.Helper()
	var h [20]byte
	cl.read(h[:])
	if binary.BigEndian.Uint64(h[:]) != optRepMagic {
		cl.t.Fatalf("bad option reply magic % x", h)
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	cl.read(data)
	return binary.BigEndian.Uint32(h[12:]), data
}

// goExport sends OPT_GO and reads replies up to the ACK.
func (cl *client) goExport(name string) {
	cl.t.Helper()
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = binary.BigEndian.AppendUint16(d, 0)
	cl.option(optGo, d)
	for {
		typ, data := cl.optReply()
		if typ == repAck {
			return
		}
		if typ&(1<<31) != 0 {
			cl.t.Fatalf("GO %q: error reply %#x %s", name, typ, data)
		}
	}
}

func (cl *client) request(r Request, payload []byte) {
	cl.t.Helper()
	cl.write(append(AppendRequest(nil, r), payload...))
}

// simpleReply reads a simple reply and returns its error and cookie.
func (cl *client) simpleReply() (Errno, uint64) {
	cl.t.Helper()
	var h [16]byte
	cl.read(h[:])
	if binary.BigEndian.Uint32(h[:]) != SimpleReplyMagic {
		cl.t.Fatalf("bad reply magic % x", h)
	}
	return Errno(binary.BigEndian.Uint32(h[4:])), binary.BigEndian.Uint64(h[8:])
}

func TestGarbageNeverCrashesTheServer(t *testing.T) {
	_, sock, _ := startServer(t, 1<<20)

	// Unknown command: EINVAL, and the connection lives on.
	cl := dial(t, sock)
	cl.goExport("vol")
	cl.request(Request{Type: 99, Cookie: 1, Length: 0}, nil)
	if e, c := cl.simpleReply(); e != EINVAL || c != 1 {
		t.Fatalf("unknown command: %v cookie %d, want EINVAL", e, c)
	}
	// A 33 MiB write is read past and refused; the next request works.
	cl.request(Request{Type: CmdWrite, Cookie: 2, Length: 33 << 20}, make([]byte, 33<<20))
	if e, _ := cl.simpleReply(); e != EOVERFLOW {
		t.Fatalf("33 MiB write: %v, want EOVERFLOW", e)
	}
	cl.request(Request{Type: CmdRead, Cookie: 3, Length: 33 << 20}, nil)
	if e, _ := cl.simpleReply(); e != EOVERFLOW {
		t.Fatalf("33 MiB read: %v, want EOVERFLOW", e)
	}
	cl.request(Request{Type: CmdWrite, Cookie: 4, Offset: 100, Length: 5}, []byte("hello"))
	if e, _ := cl.simpleReply(); e != 0 {
		t.Fatalf("write after garbage: %v", e)
	}
	// Writes to a read-only export: EPERM, payload consumed.
	ro := dial(t, sock)
	ro.goExport("ro")
	ro.request(Request{Type: CmdWrite, Cookie: 5, Length: 3}, []byte("abc"))
	if e, _ := ro.simpleReply(); e != EPERM {
		t.Fatalf("write to read-only: %v, want EPERM", e)
	}
	ro.request(Request{Type: CmdFlush, Cookie: 6}, nil)
	if e, c := ro.simpleReply(); e != 0 || c != 6 {
		t.Fatalf("flush after refused write: %v %d", e, c)
	}

	// Bad magic: a broken MUST; the server hangs up on that connection only.
	bad := dial(t, sock)
	bad.goExport("vol")
	bad.write(make([]byte, RequestHeaderSize))
	if _, err := bad.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after bad magic: %v, want EOF", err)
	}
	// Truncated header, then hang up.
	tr := dial(t, sock)
	tr.goExport("vol")
	tr.write(AppendRequest(nil, Request{Type: CmdRead, Length: 4})[:10])
	tr.c.Close()
	// Garbage during negotiation.
	neg := dial(t, sock)
	neg.write([]byte("this is not an option header at all"))
	neg.c.Close()

	// The first connection and new ones still work.
	cl.request(Request{Type: CmdRead, Cookie: 7, Offset: 100, Length: 5}, nil)
	if e, _ := cl.simpleReply(); e != 0 {
		t.Fatalf("read after other connections' garbage: %v", e)
	}
	got := make([]byte, 5)
	cl.read(got)
	if string(got) != "hello" {
		t.Fatalf("read back %q", got)
	}
	again := dial(t, sock)
	again.goExport("vol")
}

func TestOptionHaggling(t *testing.T) {
	_, sock, _ := startServer(t, 1<<20)
	cl := dial(t, sock)
	for _, opt := range []uint32{optStartTLS, 11, 99} {
		cl.option(opt, nil)
		if typ, _ := cl.optReply(); typ != repErrUnsup {
			t.Fatalf("option %d: reply %#x, want ERR_UNSUP", opt, typ)
		}
	}
	cl.option(optList, nil)
	var names []string
	for {
		typ, data := cl.optReply()
		if typ == repAck {
			break
		}
		names = append(names, string(data[4:]))
	}
	if len(names) != 2 || names[0] != "ro" || names[1] != "vol" {
		t.Fatalf("LIST: %v", names)
	}
	// Meta contexts need structured replies first.
	q := binary.BigEndian.AppendUint32(nil, 3)
	q = append(q, "vol"...)
	q = binary.BigEndian.AppendUint32(q, 0)
	cl.option(optSetMetaContext, q)
	if typ, _ := cl.optReply(); typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT before structured replies: %#x, want ERR_INVALID", typ)
	}
	cl.option(optInfo, append(binary.BigEndian.AppendUint32(nil, 4), "nope\x00\x00"...))
	if typ, _ := cl.optReply(); typ != repErrUnknown {
		t.Fatalf("INFO of an unknown export: %#x, want ERR_UNKNOWN", typ)
	}
	cl.option(optInfo, []byte{0, 0})
	if typ, _ := cl.optReply(); typ != repErrInvalid {
		t.Fatalf("malformed INFO: %#x, want ERR_INVALID", typ)
	}
	cl.option(optGo, make([]byte, maxOptionLength+1))
	if typ, _ := cl.optReply(); typ != repErrTooBig {
		t.Fatalf("oversized option: %#x, want ERR_TOO_BIG", typ)
	}
	cl.goExport("vol")
}

func TestPipelinedRequests(t *testing.T) {
	_, sock, be := startServer(t, 4<<20)
	for i := range be.data {
		be.data[i] = byte(i / 4096)
	}
	cl := dial(t, sock)
	cl.goExport("vol")
	const n = 256
	var buf []byte
	for i := range n {
		buf = append(buf, AppendRequest(nil, Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i%1024) * 4096, Length: 4096})...)
	}
	go cl.c.Write(buf)
	seen := map[uint64]bool{}
	for range n {
		e, c := cl.simpleReply()
		data := make([]byte, 4096)
		cl.read(data)
		if e != 0 || seen[c] || data[0] != byte(c%1024) {
			t.Fatalf("reply for cookie %d: err %v dup %v data %d", c, e, seen[c], data[0])
		}
		seen[c] = true
	}
}

// FuzzNegotiation feeds arbitrary client bytes to the negotiation: it must
// end (error or transmission) without panicking or hanging.
func FuzzNegotiation(f *testing.F) {
	hello := binary.BigEndian.AppendUint32(nil, clientFixed)
	opt := func(o uint32, d []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, optMagic)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(d)))
		return append(b, d...)
	}
	f.Add(append(hello, opt(optList, nil)...))
	f.Add(append(hello, opt(optStructuredReply, nil)...))
	f.Add(append(append(hello, opt(optStructuredReply, nil)...), opt(optListMetaContext, []byte("\x00\x00\x00\x03vol\x00\x00\x00\x01\x00\x00\x00\x05base:"))...))
	f.Add(append(hello, opt(optGo, []byte("\x00\x00\x00\x03vol\x00\x01\x00\x03"))...))
	f.Add(append(hello, opt(optStartTLS, nil)...))
	srv := NewServer()
	srv.AddExport(&Export{Name: "vol", Backend: &memBackend{data: make([]byte, 4096)}})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(&loopReader{data: in})
		w := bufio.NewWriter(io.Discard)
		_, _ = srv.negotiate(nil, r, w, nil) // no TLS offered: STARTTLS is refused, the connection untouched
	})
}

// loopReader returns its data once, then EOF.
type loopReader struct{ data []byte }

func (l *loopReader) Read(p []byte) (int, error) {
	if len(l.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, l.data)
	l.data = l.data[n:]
	return n, nil
}

// TestPipelinedMixedWrites: one stream of writes of every size around the
// read buffer's (some payloads read through it, some straight from the
// connection, headers both ways), small writes and flushes between them,
// sent at once: every request is answered once and the export holds
// exactly what was written.
func TestPipelinedMixedWrites(t *testing.T) {
	const size = 16 << 20
	_, sock, be := startServer(t, size)
	cl := dial(t, sock)
	cl.goExport("vol")
	want := make([]byte, size)
	lengths := []int{1 << 20, 4096, 64<<10 - 1, 64 << 10, 64<<10 + 1, 28, 200 << 10, 512, 3 << 20, 100<<10 + 3, 1}
	var stream []byte
	var off int
	cookie := uint64(0)
	for round := range 3 {
		for i, n := range lengths {
			p := make([]byte, n)
			for k := range p {
				p[k] = byte(round*31 + i*7 + k)
			}
			if off+n > size {
				t.Fatal("the writes do not fit: pipelined writes must not overlap, the server may run them in any order")
			}
			stream = append(stream, AppendRequest(nil, Request{Type: CmdWrite, Cookie: cookie, Offset: uint64(off), Length: uint32(n)})...)
			stream = append(stream, p...)
			copy(want[off:], p)
			cookie++
			if i%3 == 2 {
				stream = append(stream, AppendRequest(nil, Request{Type: CmdFlush, Cookie: cookie})...)
				cookie++
			}
			off += n + 4096
		}
	}
	stream = append(stream, AppendRequest(nil, Request{Type: CmdFlush, Cookie: cookie})...)
	cookie++
	go cl.c.Write(stream)
	answered := map[uint64]bool{}
	for range int(cookie) {
		e, c := cl.simpleReply()
		if e != 0 || answered[c] {
			t.Fatalf("reply for cookie %d: err %v, answered before %v", c, e, answered[c])
		}
		answered[c] = true
	}
	for c := range cookie {
		if !answered[c] {
			t.Fatalf("request %d not answered", c)
		}
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if !bytes.Equal(be.data, want) {
		for i := range want {
			if be.data[i] != want[i] {
				t.Fatalf("export differs from what was written, first at offset %d", i)
			}
		}
	}
}
