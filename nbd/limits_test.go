package nbd

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestNegotiationLimits: a client that connects and says nothing is hung
// up on after NegotiationTimeout, and connections beyond MaxConnections
// are closed at once, before any greeting, while those within go on.
func TestNegotiationLimits(t *testing.T) {
	srv := NewServer()
	srv.AddExport(&Export{Name: "vol", Backend: &memBackend{data: make([]byte, 1<<20)}})
	srv.NegotiationTimeout = 300 * time.Millisecond
	srv.MaxConnections = 2
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(done) }()
	defer func() { cancel(); <-done }()

	addr := l.Addr().String()
	conn := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	// Silent clients: greeted, then hung up on when the time is up.
	a, b := conn(), conn()
	greet := make([]byte, 18)
	for _, c := range []net.Conn{a, b} {
		if _, err := io.ReadFull(c, greet); err != nil {
			t.Fatalf("greeting: %v", err)
		}
	}
	// A third while two are open: closed with no greeting.
	third := conn()
	if n, err := third.Read(greet); err != io.EOF || n != 0 {
		t.Fatalf("third connection: read %d bytes, %v; want it closed at once", n, err)
	}
	if srv.Stats.Refused.Load() != 1 {
		t.Fatalf("refused %d connections, want 1", srv.Stats.Refused.Load())
	}
	start := time.Now()
	if n, err := a.Read(greet); err == nil || n != 0 {
		t.Fatalf("silent client: read %d bytes, %v; want a hang-up", n, err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Fatalf("silent client hung up on after %s, want about %s", waited, srv.NegotiationTimeout)
	}
	// Room again: a client that negotiates promptly is served, and stays
	// connected past the negotiation timeout.
	for srv.Stats.Connections.Load() > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	c := conn()
	cl := &client{t: t, c: c, r: bufio.NewReader(c)}
	cl.read(greet)
	cl.write([]byte{0, 0, 0, 3})
	cl.goExport("vol")
	time.Sleep(2 * srv.NegotiationTimeout)
	cl.request(Request{Type: CmdRead, Cookie: 7, Offset: 0, Length: 4096}, nil)
	if errno, h := cl.simpleReply(); errno != 0 || h != 7 {
		t.Fatalf("read after the negotiation timeout: errno %d handle %d", errno, h)
	}
}
