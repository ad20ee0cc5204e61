package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ClientOptions configures Dial.
type ClientOptions struct {
	// TLS, if set, negotiates NBD_OPT_STARTTLS first, as a TLS-only
	// server requires.
	TLS *tls.Config
	// Structured asks for structured replies (sparse reads, block status).
	Structured bool
	// MetaContexts are the metadata contexts to select for BlockStatus,
	// such as "base:allocation" or "qemu:dirty-bitmap:NAME"; they imply
	// Structured.
	MetaContexts []string
}

// Client is an NBD client of one export: fixed newstyle negotiation with
// NBD_OPT_GO, optional TLS, structured replies and metadata contexts, and
// many requests in flight on one connection (each call may run on its own
// goroutine). It is safe for concurrent use.
type Client struct {
	conn       net.Conn
	size       int64
	flags      uint16
	structured bool
	contexts   map[uint32]string
	maxRequest int64

	wmu sync.Mutex
	w   *bufio.Writer

	mu      sync.Mutex
	cookie  uint64
	pending map[uint64]*call
	err     error
	done    chan struct{}
}

// call is one request waiting for its reply.
type call struct {
	req   Request
	buf   []byte                                       // a read's destination
	bs    func(ctx string, length int64, flags uint32) // block status extents
	err   error
	doneC chan struct{}
}

// Reply option magic of the negotiation phase.
const optReplyMagic = 0x3e889045565a9

// Dial connects to export on a server at network/addr ("unix", path or
// "tcp", host:port) and negotiates.
func Dial(ctx context.Context, network, addr, export string, opts ClientOptions) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd %s %s: %w", network, addr, err)
	}
	c, err := NewClient(ctx, conn, export, opts)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd %s %s: %w", network, addr, err)
	}
	return c, nil
}

// NewClient negotiates export on a connection made some other way.
func NewClient(ctx context.Context, conn net.Conn, export string, opts ClientOptions) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c := &Client{conn: conn, pending: map[uint64]*call{}, done: make(chan struct{}), contexts: map[uint32]string{}, maxRequest: 32 << 20}
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	n := &clientNegotiator{r: r, w: w}
	var hs [18]byte
	if _, err := io.ReadFull(r, hs[:]); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hs[0:]) != initPasswd || binary.BigEndian.Uint64(hs[8:]) != optMagic {
		return nil, errors.New("not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hs[16:])
	if sflags&flagFixedNewstyle == 0 {
		return nil, errors.New("the server does not speak fixed newstyle")
	}
	cflags := clientFixed
	if sflags&flagNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	if err := binary.Write(w, binary.BigEndian, cflags); err != nil {
		return nil, err
	}
	if opts.TLS != nil {
		typ, data, err := n.simpleOption(optStartTLS, nil)
		if err != nil {
			return nil, err
		}
		if typ != repAck {
			return nil, fmt.Errorf("STARTTLS refused: %s", optError(typ, data))
		}
		tc := tls.Client(conn, opts.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
		r, w = bufio.NewReader(tc), bufio.NewWriter(tc)
		n = &clientNegotiator{r: r, w: w}
	}
	if opts.Structured || len(opts.MetaContexts) > 0 {
		typ, data, err := n.simpleOption(optStructuredReply, nil)
		if err != nil {
			return nil, err
		}
		if typ != repAck {
			return nil, fmt.Errorf("structured replies refused: %s", optError(typ, data))
		}
		c.structured = true
	}
	if len(opts.MetaContexts) > 0 {
		q := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
		q = append(q, export...)
		q = binary.BigEndian.AppendUint32(q, uint32(len(opts.MetaContexts)))
		for _, m := range opts.MetaContexts {
			q = binary.BigEndian.AppendUint32(q, uint32(len(m)))
			q = append(q, m...)
		}
		if err := n.send(optSetMetaContext, q); err != nil {
			return nil, err
		}
		for {
			typ, data, err := n.reply(optSetMetaContext)
			if err != nil {
				return nil, err
			}
			if typ == repAck {
				break
			}
			if typ != repMetaContext || len(data) < 4 {
				return nil, fmt.Errorf("metadata contexts: %s", optError(typ, data))
			}
			c.contexts[binary.BigEndian.Uint32(data)] = string(data[4:])
		}
		if len(c.contexts) != len(opts.MetaContexts) {
			return nil, fmt.Errorf("the server selected %d of the %d metadata contexts asked for", len(c.contexts), len(opts.MetaContexts))
		}
	}
	g := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	g = append(g, export...)
	g = binary.BigEndian.AppendUint16(g, 1)
	g = binary.BigEndian.AppendUint16(g, infoBlockSize)
	if err := n.send(optGo, g); err != nil {
		return nil, err
	}
	gotExport := false
	for {
		typ, data, err := n.reply(optGo)
		if err != nil {
			return nil, err
		}
		if typ == repAck {
			break
		}
		if typ != repInfo {
			return nil, fmt.Errorf("export %q: %s", export, optError(typ, data))
		}
		if len(data) < 2 {
			return nil, errors.New("short NBD_REP_INFO")
		}
		switch binary.BigEndian.Uint16(data) {
		case infoExport:
			if len(data) != 12 {
				return nil, errors.New("bad NBD_INFO_EXPORT")
			}
			c.size = int64(binary.BigEndian.Uint64(data[2:]))
			c.flags = binary.BigEndian.Uint16(data[10:])
			gotExport = true
		case infoBlockSize:
			if len(data) == 14 {
				if mx := int64(binary.BigEndian.Uint32(data[10:])); mx > 0 && mx < c.maxRequest {
					c.maxRequest = mx
				}
			}
		}
	}
	if !gotExport {
		return nil, errors.New("the server sent no export information")
	}
	_ = conn.SetDeadline(time.Time{})
	c.conn = conn
	c.w = w
	go c.readLoop(r)
	return c, nil
}

type clientNegotiator struct {
	r *bufio.Reader
	w *bufio.Writer
}

func (n *clientNegotiator) send(opt uint32, data []byte) error {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], optMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	if _, err := n.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := n.w.Write(data); err != nil {
		return err
	}
	return n.w.Flush()
}

func (n *clientNegotiator) reply(opt uint32) (typ uint32, data []byte, err error) {
	var h [20]byte
	if _, err := io.ReadFull(n.r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("option reply: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:]) != optReplyMagic || binary.BigEndian.Uint32(h[8:]) != opt {
		return 0, nil, errors.New("bad option reply")
	}
	typ = binary.BigEndian.Uint32(h[12:])
	length := binary.BigEndian.Uint32(h[16:])
	if length > maxOptionLength {
		return 0, nil, fmt.Errorf("option reply of %d bytes", length)
	}
	data = make([]byte, length)
	if _, err := io.ReadFull(n.r, data); err != nil {
		return 0, nil, fmt.Errorf("option reply: %w", err)
	}
	return typ, data, nil
}

// simpleOption sends an option and reads its single reply.
func (n *clientNegotiator) simpleOption(opt uint32, data []byte) (uint32, []byte, error) {
	if err := n.send(opt, data); err != nil {
		return 0, nil, err
	}
	return n.reply(opt)
}

func optError(typ uint32, data []byte) string {
	name := map[uint32]string{repErrUnsup: "unsupported", repErrInvalid: "invalid", repErrUnknown: "unknown export",
		repErrTooBig: "too big", repErrTLSReqd: "TLS required"}[typ]
	if name == "" {
		name = fmt.Sprintf("reply %#x", typ)
	}
	if len(data) > 0 {
		return name + ": " + string(data)
	}
	return name
}

// Size is the export's size.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server refuses writes.
func (c *Client) ReadOnly() bool { return c.flags&tfReadOnly != 0 }

// readLoop receives replies and completes their calls.
func (c *Client) readLoop(r *bufio.Reader) {
	err := c.receive(r)
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("nbd connection closed: %w", err)
	}
	for _, cl := range c.pending {
		cl.err = c.err
		close(cl.doneC)
	}
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) take(cookie uint64, last bool) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	if last {
		delete(c.pending, cookie)
	}
	return cl
}

func (c *Client) receive(r *bufio.Reader) error {
	var h [32]byte
	for {
		if _, err := io.ReadFull(r, h[:4]); err != nil {
			return err
		}
		switch binary.BigEndian.Uint32(h[:4]) {
		case SimpleReplyMagic:
			if _, err := io.ReadFull(r, h[4:16]); err != nil {
				return err
			}
			errno := Errno(binary.BigEndian.Uint32(h[4:]))
			cl := c.take(binary.BigEndian.Uint64(h[8:]), true)
			if cl == nil {
				return errors.New("reply to no request")
			}
			if errno != 0 {
				cl.err = fmt.Errorf("%s at %d: %w", cl.req.Type, cl.req.Offset, errno)
			} else if cl.req.Type == CmdRead {
				if _, err := io.ReadFull(r, cl.buf); err != nil {
					cl.err = err
					close(cl.doneC)
					return err
				}
			}
			close(cl.doneC)
		case StructuredReplyMagic:
			if _, err := io.ReadFull(r, h[4:structuredHeaderBytes]); err != nil {
				return err
			}
			flags, typ := binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:])
			cookie, length := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[16:])
			last := flags&ReplyFlagDone != 0
			cl := c.take(cookie, last)
			if cl == nil {
				return errors.New("structured reply to no request")
			}
			if err := c.chunk(r, cl, typ, length); err != nil {
				cl.err = err
				close(cl.doneC)
				return err
			}
			if last {
				close(cl.doneC)
			}
		default:
			return errors.New("bad reply magic")
		}
	}
}

// chunk reads one structured reply chunk of cl.
func (c *Client) chunk(r *bufio.Reader, cl *call, typ uint16, length uint32) error {
	if length > uint32(c.maxRequest)+64<<10 {
		return fmt.Errorf("reply chunk of %d bytes", length)
	}
	data := make([]byte, 0)
	if typ != ReplyTypeOffsetData { // the data goes straight to its place
		data = make([]byte, length)
		if _, err := io.ReadFull(r, data); err != nil {
			return err
		}
	}
	switch typ {
	case ReplyTypeNone:
	case ReplyTypeOffsetData:
		var o [8]byte
		if length < 8 {
			return errors.New("short OFFSET_DATA")
		}
		if _, err := io.ReadFull(r, o[:]); err != nil {
			return err
		}
		off := int64(binary.BigEndian.Uint64(o[:])) - int64(cl.req.Offset)
		n := int64(length - 8)
		if cl.req.Type != CmdRead || off < 0 || off+n > int64(len(cl.buf)) {
			return errors.New("OFFSET_DATA outside its request")
		}
		if _, err := io.ReadFull(r, cl.buf[off:off+n]); err != nil {
			return err
		}
	case ReplyTypeOffsetHole:
		if len(data) != 12 {
			return errors.New("bad OFFSET_HOLE")
		}
		off := int64(binary.BigEndian.Uint64(data)) - int64(cl.req.Offset)
		n := int64(binary.BigEndian.Uint32(data[8:]))
		if cl.req.Type != CmdRead || off < 0 || off+n > int64(len(cl.buf)) {
			return errors.New("OFFSET_HOLE outside its request")
		}
		clear(cl.buf[off : off+n])
	case ReplyTypeBlockStatus:
		if len(data) < 12 || (len(data)-4)%8 != 0 || cl.bs == nil {
			return errors.New("bad BLOCK_STATUS reply")
		}
		name := c.contexts[binary.BigEndian.Uint32(data)]
		for d := data[4:]; len(d) >= 8; d = d[8:] {
			cl.bs(name, int64(binary.BigEndian.Uint32(d)), binary.BigEndian.Uint32(d[4:]))
		}
	case ReplyTypeError, ReplyTypeErrorOffset:
		if len(data) < 6 {
			return errors.New("bad error chunk")
		}
		errno := Errno(binary.BigEndian.Uint32(data))
		msg := ""
		if ml := int(binary.BigEndian.Uint16(data[4:])); 6+ml <= len(data) {
			msg = string(data[6 : 6+ml])
		}
		if cl.err == nil {
			cl.err = fmt.Errorf("%s at %d: %w (%s)", cl.req.Type, cl.req.Offset, errno, msg)
		}
	default:
		if typ&(1<<15) != 0 && cl.err == nil {
			cl.err = fmt.Errorf("%s at %d: error reply %d", cl.req.Type, cl.req.Offset, typ)
		}
	}
	return nil
}

// do sends one request and waits for its reply. The wait does not end
// early on ctx: the reply may still write into the caller's buffer.
func (c *Client) do(ctx context.Context, req Request, payload []byte, cl *call) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cl.req, cl.doneC = req, make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.cookie++
	req.Cookie = c.cookie
	cl.req.Cookie = req.Cookie
	c.pending[req.Cookie] = cl
	c.mu.Unlock()
	c.wmu.Lock()
	_, err := c.w.Write(AppendRequest(nil, req))
	if err == nil && len(payload) > 0 {
		_, err = c.w.Write(payload)
	}
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.conn.Close() // the stream is broken: the reader ends every call
	}
	<-cl.doneC
	return cl.err
}

// ReadAt fills p from off, in requests of at most the server's maximum,
// all in flight at once.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	return c.split(p, off, func(p []byte, off int64) error {
		return c.do(ctx, Request{Type: CmdRead, Offset: uint64(off), Length: uint32(len(p))}, nil, &call{buf: p})
	})
}

// WriteAt writes p at off; with fua each request is durable on return.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var f CommandFlags
	if fua {
		f = FlagFUA
	}
	return c.split(p, off, func(p []byte, off int64) error {
		return c.do(ctx, Request{Type: CmdWrite, Flags: f, Offset: uint64(off), Length: uint32(len(p))}, p, &call{})
	})
}

func (c *Client) split(p []byte, off int64, fn func([]byte, int64) error) error {
	if off < 0 || off+int64(len(p)) > c.size {
		return fmt.Errorf("nbd: [%d, %d) outside the export's %d bytes", off, off+int64(len(p)), c.size)
	}
	if int64(len(p)) <= c.maxRequest {
		return fn(p, off)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for len(p) > 0 {
		n := min(int64(len(p)), c.maxRequest)
		wg.Add(1)
		go func(p []byte, off int64) {
			defer wg.Done()
			if err := fn(p, off); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}(p[:n], off)
		p, off = p[n:], off+n
	}
	wg.Wait()
	return first
}

// Flush makes every completed write durable.
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, Request{Type: CmdFlush}, nil, &call{})
}

// Zero writes zeros over [off, off+length).
func (c *Client) Zero(ctx context.Context, off, length int64) error {
	for length > 0 {
		n := min(length, 1<<30)
		if err := c.do(ctx, Request{Type: CmdWriteZeroes, Offset: uint64(off), Length: uint32(n)}, nil, &call{}); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// BlockStatus asks for the extents of [off, off+length) in the selected
// metadata contexts; fn hears each extent, by context name, in order.
func (c *Client) BlockStatus(ctx context.Context, off, length int64, fn func(context string, length int64, flags uint32)) error {
	if len(c.contexts) == 0 {
		return errors.New("nbd: no metadata context was selected")
	}
	return c.do(ctx, Request{Type: CmdBlockStatus, Offset: uint64(off), Length: uint32(min(length, 1<<31))}, nil, &call{bs: fn})
}

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Client) Close() error {
	c.wmu.Lock()
	_, _ = c.w.Write(AppendRequest(nil, Request{Type: CmdDisc}))
	_ = c.w.Flush()
	c.wmu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}
