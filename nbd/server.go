package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// MaxPayload is the largest read or write accepted: 32 MiB, as
	// qemu and nbdkit use.
	MaxPayload = 32 << 20
	// PreferredBlockSize is advertised as the preferred I/O size.
	PreferredBlockSize = 64 << 10
	// connBudget bounds the payload bytes one connection may have in
	// flight (read buffers and write payloads), so memory stays bounded
	// however deep a client pipelines.
	connBudget = 128 << 20
	// socketBuffer is the socket send and receive buffer size asked for.
	socketBuffer = 4 << 20
)

// Export is one named block device.
type Export struct {
	Name        string
	Description string
	ReadOnly    bool
	Backend     Backend
}

// Defaults of a Server's bounds: a client has this long to negotiate, and
// this many connections may be open at once.
const (
	DefaultNegotiationTimeout = 30 * time.Second
	DefaultMaxConnections     = 1024
)

// Stats counts a server's activity; safe for concurrent reads.
type Stats struct {
	Connections  atomic.Int64 // currently open
	Refused      atomic.Int64 // closed at once: too many open
	Requests     atomic.Int64
	Errors       atomic.Int64 // error replies sent
	BytesRead    atomic.Int64
	BytesWritten atomic.Int64
	BytesSpliced atomic.Int64 // of BytesWritten, spliced from the socket
}

// Server serves exports over NBD. Exports may be added and removed while
// it runs; a removed export's open connections keep working until closed.
type Server struct {
	// Logger receives connection-level events; nil means slog.Default().
	Logger *slog.Logger
	// Stats counts requests and bytes.
	Stats Stats
	// Resolve, if set, is asked for an export a client names that is not
	// published; one it returns is published under that name.
	Resolve func(name string) *Export
	// TLSConfig, if set, makes TLS (NBD_OPT_STARTTLS) required on TCP
	// connections; Unix socket connections never use it (the socket's
	// mode guards them).
	TLSConfig *tls.Config
	// NegotiationTimeout bounds the handshake, TLS included; default
	// DefaultNegotiationTimeout.
	NegotiationTimeout time.Duration
	// MaxConnections bounds open connections; beyond it new ones are
	// closed at once. Default DefaultMaxConnections.
	MaxConnections int

	mu      sync.RWMutex
	exports map[string]*Export
	conns   map[net.Conn]string // connection -> its export ("" while negotiating)
	closed  bool
	wg      sync.WaitGroup
}

// NewServer returns a server with no exports.
func NewServer() *Server {
	return &Server{exports: make(map[string]*Export), conns: make(map[net.Conn]string)}
}

func (srv *Server) logger() *slog.Logger {
	if srv.Logger != nil {
		return srv.Logger
	}
	return slog.Default()
}

// AddExport publishes e under e.Name, replacing any export of that name.
func (srv *Server) AddExport(e *Export) {
	srv.mu.Lock()
	srv.exports[e.Name] = e
	srv.mu.Unlock()
}

// RemoveExport unpublishes name.
func (srv *Server) RemoveExport(name string) {
	srv.mu.Lock()
	delete(srv.exports, name)
	srv.mu.Unlock()
}

func (srv *Server) export(name string) *Export {
	srv.mu.RLock()
	e := srv.exports[name]
	srv.mu.RUnlock()
	if e != nil || srv.Resolve == nil {
		return e
	}
	if e = srv.Resolve(name); e == nil {
		return nil
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if old := srv.exports[name]; old != nil {
		return old // resolved twice at once: the first one stays
	}
	srv.exports[name] = e
	return e
}

func (srv *Server) exportNames() []string {
	srv.mu.RLock()
	defer srv.mu.RUnlock()
	names := make([]string, 0, len(srv.exports))
	for n := range srv.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// umaskMu serialises umask changes; the umask is process-wide.
var umaskMu sync.Mutex

// Listen opens a listener for an address of the form unix:///path (the
// socket is created mode 0600, replacing a stale one) or tcp://host:port.
func Listen(addr string) (net.Listener, error) {
	switch {
	case len(addr) > 7 && addr[:7] == "unix://":
		path := addr[7:]
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			// A socket left by a process that died; a live server
			// would answer a dial.
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen %s: another server is running there", addr)
			}
			os.Remove(path)
		}
		// The umask makes the socket 0600 from its creation: no window
		// in which another user could connect.
		umaskMu.Lock()
		old := syscall.Umask(0o177)
		l, err := net.Listen("unix", path)
		syscall.Umask(old)
		umaskMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	case len(addr) > 6 && addr[:6] == "tcp://":
		l, err := net.Listen("tcp", addr[6:])
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("listen %q: want unix:///PATH or tcp://HOST:PORT", addr)
}

// Serve accepts connections on l until ctx is done or l fails, then closes
// every connection and waits for their requests to finish.
func (srv *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var tempDelay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				srv.shutdown()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			srv.shutdown()
			return fmt.Errorf("nbd accept: %w", err)
		}
		tempDelay = 0
		srv.mu.Lock()
		if srv.closed {
			srv.mu.Unlock()
			c.Close()
			continue
		}
		limit := srv.MaxConnections
		if limit <= 0 {
			limit = DefaultMaxConnections
		}
		if len(srv.conns) >= limit {
			srv.mu.Unlock()
			if srv.Stats.Refused.Add(1)%100 == 1 {
				srv.logger().Warn("nbd connection refused: too many open", "limit", limit, "remote", c.RemoteAddr().String())
			}
			c.Close()
			continue
		}
		srv.conns[c] = ""
		srv.wg.Add(1)
		srv.mu.Unlock()
		go func() {
			defer srv.wg.Done()
			srv.serveConn(ctx, c)
			srv.mu.Lock()
			delete(srv.conns, c)
			srv.mu.Unlock()
		}()
	}
}

// ServeConn serves one connection that was made some other way than by a
// listener (one end of a socketpair handed to QEMU), until it ends or ctx
// is done. It counts against MaxConnections like any other.
func (srv *Server) ServeConn(ctx context.Context, c net.Conn) error {
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		c.Close()
		return errors.New("nbd: server closed")
	}
	srv.conns[c] = ""
	srv.wg.Add(1)
	srv.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer func() {
		srv.mu.Lock()
		delete(srv.conns, c)
		srv.mu.Unlock()
		srv.wg.Done()
	}()
	srv.serveConn(ctx, c)
	return nil
}

func (srv *Server) shutdown() {
	srv.mu.Lock()
	srv.closed = true
	for c := range srv.conns {
		c.Close()
	}
	srv.mu.Unlock()
	srv.wg.Wait()
}

// ConnectionsTo returns how many connections are attached to export name.
func (srv *Server) ConnectionsTo(name string) int {
	srv.mu.RLock()
	defer srv.mu.RUnlock()
	n := 0
	for _, e := range srv.conns {
		if e == name {
			n++
		}
	}
	return n
}

func (srv *Server) setConnExport(c net.Conn, name string) {
	srv.mu.Lock()
	if _, ok := srv.conns[c]; ok {
		srv.conns[c] = name
	}
	srv.mu.Unlock()
}

func (srv *Server) serveConn(ctx context.Context, c net.Conn) {
	srv.Stats.Connections.Add(1)
	accepted := c // the key of srv.conns; c becomes the TLS conn after STARTTLS
	defer func() {
		// Detached before the count drops: whoever saw the count at
		// zero finds no connection attached either.
		srv.setConnExport(accepted, "")
		srv.Stats.Connections.Add(-1)
	}()
	defer c.Close()
	// Large socket buffers let a whole read reply go out in one write
	// instead of filling the buffer, parking on the poller and resuming:
	// that round trip cost more CPU than the copy itself.
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if b, ok := c.(buffered); ok {
		_ = b.SetWriteBuffer(socketBuffer)
		_ = b.SetReadBuffer(socketBuffer)
	}
	log := srv.logger().With("remote", c.RemoteAddr().String())
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	timeout := srv.NegotiationTimeout
	if timeout <= 0 {
		timeout = DefaultNegotiationTimeout
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	var tlsCfg *tls.Config
	if c.LocalAddr().Network() == "tcp" {
		tlsCfg = srv.TLSConfig
	}
	neg, err := srv.negotiate(c, r, w, tlsCfg)
	if err != nil {
		if !errors.Is(err, errAbort) {
			log.Debug("nbd negotiation ended", "err", err)
		}
		return
	}
	sess := neg.sess
	if neg.conn != c { // TLS: closing it sends close_notify, then closes c
		c = neg.conn
		defer c.Close()
	}
	r = neg.r
	_ = c.SetDeadline(time.Time{})
	log.Debug("nbd transmission", "export", sess.export.Name, "structured", sess.structured, "contexts", sess.contexts)
	t := newTransmission(srv, sess, c, r)
	if err := t.run(ctx); err != nil {
		log.Debug("nbd connection ended", "export", sess.export.Name, "err", err)
	}
}
