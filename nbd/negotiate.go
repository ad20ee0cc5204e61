package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Negotiation constants.
const (
	initPasswd  = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	optMagic    = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	optRepMagic = protocol.NEGOTIATION_MAGIC_REPLY

	flagFixedNewstyle = uint16(protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE)
	flagNoZeroes      = uint16(1 << 1)
	clientFixed       = uint32(1 << 0)
	clientNoZeroes    = uint32(1 << 1)

	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)

	repAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext = uint32(4)
	repErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrInvalid  = uint32(3 | 1<<31)
	repErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrTooBig   = uint32(9 | 1<<31)
	repErrTLSReqd  = uint32(5 | 1<<31)

	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags.
const (
	tfHasFlags     = uint16(1 << 0)
	tfReadOnly     = uint16(1 << 1)
	tfSendFlush    = uint16(1 << 2)
	tfSendFUA      = uint16(1 << 3)
	tfSendTrim     = uint16(1 << 5)
	tfWriteZeroes  = uint16(1 << 6)
	tfSendDF       = uint16(1 << 7)
	tfCanMultiConn = uint16(1 << 8)
	tfSendCache    = uint16(1 << 10)
	tfFastZero     = uint16(1 << 11)
)

// maxOptionLength bounds one option's data; the longest legitimate option
// (a meta context query list) is far smaller.
const maxOptionLength = 64 << 10

// maxString bounds strings inside options (export names, queries), as the
// protocol does.
const maxString = 4096

// errAbort ends negotiation without an error to report.
var errAbort = errors.New("client aborted negotiation")

// session is the outcome of negotiation.
type session struct {
	export     *Export
	structured bool
	noZeroes   bool
	// contexts are the selected metadata contexts; a context's id is
	// its index.
	contexts []string
}

// transmissionFlags returns the flags advertised for e.
func transmissionFlags(e *Export, structured bool) uint16 {
	f := tfHasFlags | tfSendFlush | tfSendFUA | tfCanMultiConn | tfSendCache
	if e.ReadOnly {
		f |= tfReadOnly
	} else {
		f |= tfSendTrim | tfWriteZeroes | tfFastZero
	}
	if structured {
		f |= tfSendDF
	}
	return f
}

type negotiator struct {
	r   *bufio.Reader
	w   *bufio.Writer
	srv *Server
	s   session
	// conn is the connection, a *tls.Conn once STARTTLS is done; tlsCfg
	// is what STARTTLS uses (nil: not offered) and, when set, TLS is
	// required before anything but STARTTLS and ABORT.
	conn   net.Conn
	tlsCfg *tls.Config
	tlsOn  bool
	// accepted is the connection as the server accepted it: the key
	// of Server.conns, which a TLS conn is not.
	accepted net.Conn
}

// attach makes e the session's export and records the connection as
// attached to it, before the reply that tells the client so: once a
// client believes it is attached, the server counts it (ConnectionsTo),
// and a delete or revert cannot slip in between.
func (n *negotiator) attach(e *Export) {
	n.s.export = e
	n.srv.setConnExport(n.accepted, e.Name)
}

// negotiate runs the fixed newstyle handshake and option haggling. It
// returns the session once the client enters transmission, and the
// connection to go on with (TLS, if STARTTLS was negotiated). With tlsCfg
// set, TLS is required, as qemu-nbd's --tls-creds does.
func (srv *Server) negotiate(c net.Conn, r *bufio.Reader, w *bufio.Writer, tlsCfg *tls.Config) (*negotiated, error) {
	return srv.haggle(&negotiator{r: r, w: w, srv: srv, conn: c, tlsCfg: tlsCfg, accepted: c})
}

// negotiated is where transmission starts: the session, the connection
// and its reader (which may hold requests the client already sent).
type negotiated struct {
	sess *session
	conn net.Conn
	r    *bufio.Reader
}

func (srv *Server) haggle(n *negotiator) (*negotiated, error) {
	r, w := n.r, n.w
	var hs [18]byte
	binary.BigEndian.PutUint64(hs[0:], initPasswd)
	binary.BigEndian.PutUint64(hs[8:], optMagic)
	binary.BigEndian.PutUint16(hs[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := w.Write(hs[:]); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(r, cf[:]); err != nil {
		return nil, fmt.Errorf("client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(clientFixed|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("client sent unknown flags %#x", flags)
	}
	n.s.noZeroes = flags&clientNoZeroes != 0
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, fmt.Errorf("option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != optMagic {
			return nil, fmt.Errorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLength {
			// Too long to be real: skip it without buffering, refuse it.
			if _, err := io.CopyN(io.Discard, r, int64(length)); err != nil {
				return nil, err
			}
			if err := n.reply(opt, repErrTooBig, []byte("option too long")); err != nil {
				return nil, err
			}
			if err := w.Flush(); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("option %d data: %w", opt, err)
		}
		if n.tlsCfg != nil && !n.tlsOn && opt != optStartTLS && opt != optAbort {
			if opt == optExportName { // it has no error reply: hang up
				return nil, errors.New("NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server")
			}
			if err := n.errReply(opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first"); err != nil {
				return nil, err
			}
			if err := w.Flush(); err != nil {
				return nil, err
			}
			continue
		}
		if opt == optStartTLS {
			if err := n.startTLS(data); err != nil {
				return nil, err
			}
			r, w = n.r, n.w
			continue
		}
		done, err := n.option(opt, data)
		if err != nil {
			return nil, err
		}
		if err := w.Flush(); err != nil {
			return nil, err
		}
		if done {
			return &negotiated{sess: &n.s, conn: n.conn, r: n.r}, nil
		}
	}
}

// startTLS answers NBD_OPT_STARTTLS: an ack, then the TLS handshake on the
// same connection; haggling goes on inside TLS, with what was agreed
// before forgotten (the protocol says so: it was not protected).
func (n *negotiator) startTLS(data []byte) error {
	opt := optStartTLS
	var err error
	switch {
	case n.tlsCfg == nil:
		err = n.errReply(opt, repErrUnsup, "TLS is not offered on this connection")
	case n.tlsOn:
		err = n.errReply(opt, repErrInvalid, "TLS is already on")
	case len(data) != 0:
		err = n.errReply(opt, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	default:
		if err := n.reply(opt, repAck, nil); err != nil {
			return err
		}
		if err := n.w.Flush(); err != nil {
			return err
		}
		if n.r.Buffered() != 0 {
			return errors.New("client sent data before the TLS handshake")
		}
		tc := tls.Server(n.conn, n.tlsCfg)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		n.conn, n.tlsOn = tc, true
		n.r = bufio.NewReaderSize(tc, 64<<10)
		n.w = bufio.NewWriterSize(tc, 64<<10)
		n.s = session{noZeroes: n.s.noZeroes}
		return nil
	}
	if err != nil {
		return err
	}
	return n.w.Flush()
}

func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], optRepMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	if _, err := n.w.Write(h[:]); err != nil {
		return err
	}
	_, err := n.w.Write(data)
	return err
}

func (n *negotiator) errReply(opt, typ uint32, format string, args ...any) error {
	return n.reply(opt, typ, []byte(fmt.Sprintf(format, args...)))
}

// option handles one option; done means transmission starts.
func (n *negotiator) option(opt uint32, data []byte) (done bool, err error) {
	switch opt {
	case optExportName:
		e := n.srv.export(string(data))
		if e == nil {
			// The protocol gives no way to report this but hanging up.
			return false, fmt.Errorf("unknown export %q", data)
		}
		n.attach(e)
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(e.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], transmissionFlags(e, n.s.structured))
		out := b[:]
		if n.s.noZeroes {
			out = b[:10]
		}
		_, err := n.w.Write(out)
		return err == nil, err
	case optAbort:
		_ = n.reply(opt, repAck, nil)
		_ = n.w.Flush()
		return false, errAbort
	case optList:
		if len(data) != 0 {
			return false, n.errReply(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, name := range n.srv.exportNames() {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := n.reply(opt, repServer, append(b, name...)); err != nil {
				return false, err
			}
		}
		return false, n.reply(opt, repAck, nil)
	case optInfo, optGo:
		return n.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, n.errReply(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		n.s.structured = true
		return false, n.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, n.metaContext(opt, data)
	default:
		// EXTENDED_HEADERS and anything newer or unknown.
		return false, n.errReply(opt, repErrUnsup, "option %d is not supported", opt)
	}
}

// parseString reads a length-prefixed string (32-bit length) from data.
func parseString(data []byte) (string, []byte, bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	l := binary.BigEndian.Uint32(data)
	if l > maxString || uint32(len(data)-4) < l {
		return "", nil, false
	}
	return string(data[4 : 4+l]), data[4+l:], true
}

func (n *negotiator) infoGo(opt uint32, data []byte) (bool, error) {
	name, rest, ok := parseString(data)
	if !ok || len(rest) < 2 {
		return false, n.errReply(opt, repErrInvalid, "malformed NBD_OPT_INFO/GO")
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return false, n.errReply(opt, repErrInvalid, "malformed information request list")
	}
	e := n.srv.export(name)
	if e == nil {
		return false, n.errReply(opt, repErrUnknown, "no export named %q", name)
	}
	var reqs []uint16
	for i := 0; i < nreq; i++ {
		reqs = append(reqs, binary.BigEndian.Uint16(rest[2*i:]))
	}
	// Metadata contexts chosen for another export do not carry over.
	if len(n.s.contexts) > 0 && n.s.export != nil && n.s.export != e {
		n.s.contexts = nil
	}
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Backend.Size()))
	b = binary.BigEndian.AppendUint16(b, transmissionFlags(e, n.s.structured))
	if err := n.reply(opt, repInfo, b); err != nil {
		return false, err
	}
	for _, r := range reqs {
		switch r {
		case infoName:
			if err := n.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), e.Name...)); err != nil {
				return false, err
			}
		case infoDescription:
			if e.Description != "" {
				if err := n.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), e.Description...)); err != nil {
					return false, err
				}
			}
		}
	}
	// Block sizes are always sent: a minimum of 1 (no alignment needed),
	// the preferred size and the largest payload accepted.
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, 1)
	bs = binary.BigEndian.AppendUint32(bs, PreferredBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, MaxPayload)
	if err := n.reply(opt, repInfo, bs); err != nil {
		return false, err
	}
	done := opt == optGo
	if done {
		n.attach(e)
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return false, err
	}
	return done, nil
}

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT.
func (n *negotiator) metaContext(opt uint32, data []byte) error {
	if !n.s.structured {
		return n.errReply(opt, repErrInvalid, "negotiate structured replies first")
	}
	name, rest, ok := parseString(data)
	if !ok || len(rest) < 4 {
		return n.errReply(opt, repErrInvalid, "malformed meta context request")
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		var q string
		if q, rest, ok = parseString(rest); !ok {
			return n.errReply(opt, repErrInvalid, "malformed meta context query")
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return n.errReply(opt, repErrInvalid, "trailing bytes after meta context queries")
	}
	e := n.srv.export(name)
	if e == nil {
		return n.errReply(opt, repErrUnknown, "no export named %q", name)
	}
	available := e.Backend.MetaContexts()
	var matched []string
	seen := map[string]bool{}
	add := func(c string) {
		if !seen[c] {
			seen[c] = true
			matched = append(matched, c)
		}
	}
	if len(queries) == 0 && opt == optListMetaContext {
		for _, c := range available {
			add(c)
		}
	}
	for _, q := range queries {
		for _, c := range available {
			// "base:" and "qemu:dirty-bitmap:" select every context
			// of that namespace on LIST, as qemu does; an exact name
			// selects that context.
			if c == q || (opt == optListMetaContext && strings.HasSuffix(q, ":") && strings.HasPrefix(c, q)) ||
				(opt == optListMetaContext && q == "qemu:" && strings.HasPrefix(c, "qemu:")) {
				add(c)
			}
		}
	}
	if opt == optSetMetaContext {
		n.s.contexts = matched
		n.s.export = e
	}
	for i, c := range matched {
		id := uint32(0)
		if opt == optSetMetaContext {
			id = uint32(i + 1) // ids start at 1; 0 is reserved for LIST
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := n.reply(opt, repMetaContext, append(b, c...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}
