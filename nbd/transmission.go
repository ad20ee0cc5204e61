package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// allowedFlags lists the command flags each command accepts; any other
// flag is answered with EINVAL.
var allowedFlags = map[Command]CommandFlags{
	CmdRead:        FlagDF,
	CmdWrite:       FlagFUA,
	CmdDisc:        0,
	CmdFlush:       0,
	CmdTrim:        FlagFUA,
	CmdCache:       0,
	CmdWriteZeroes: FlagFUA | FlagNoHole | FlagFastZero,
	CmdBlockStatus: FlagReqOne,
}

// maxInFlight bounds the requests in progress per connection. Measured
// with fio (4 KiB random writes, queue depth 32, one connection): 32K IOPS
// with no bound, 46-54K with 2 to 8.
const maxInFlight = 8

// maxDescriptors bounds the extents in one block status reply.
const maxDescriptors = 1 << 16

type transmission struct {
	srv    *Server
	s      *session
	conn   net.Conn
	r      *bufio.Reader
	size   int64
	budget *semaphore.Weighted
	// jobs feeds the connection's workers, at most maxInFlight of them:
	// the requests in progress on this connection. More gain nothing:
	// the kernel serialises buffered writes to one file, and every extra
	// blocked pwrite is another OS thread to schedule. Workers live as
	// long as the connection: a goroutine per request would start on a
	// small stack and grow it (copy it) on every request, which costs a
	// 4 KiB write more than its system call.
	jobs     chan job
	nworkers int
	wg       sync.WaitGroup

	// Replies go out by combining: the goroutine with a reply to send
	// appends it to pending and, if no one is writing, writes everything
	// pending in one vectored write, again until pending stays empty;
	// if someone is, that writer takes it along. At queue depth 1 the
	// request's own goroutine writes its reply, with no hand-off to wake
	// another; under a deep queue of small requests one system call
	// carries many replies. After a failed write the connection is
	// closed and later replies are only released.
	wmu      sync.Mutex
	pending  []reply
	spare    []reply
	flushing bool
	werr     error
	nb       net.Buffers
	inflight atomic.Int32 // requests on workers
	// raw is the connection's descriptor for sendfile and splice, nil
	// where there is none (TLS, a wrapped connection): reads and writes
	// are then copied.
	raw syscall.RawConn
	// fw is the backend's file for spliced writes (nil: none); pipe is
	// the reader's, made on first use; noSplice turns splicing off
	// for good (no pipe could be made, or the file takes no splices).
	fw       FileWriter
	pipe     *pipe
	noSplice bool
}

// job is one request for a worker: its payload (writes) and the weight
// it holds of the connection's budget.
type job struct {
	req     Request
	payload []byte
	weight  int64
}

// reply is one complete reply: its buffers go out back to back, then, if
// file is set, fileLen bytes of it from fileOff (sendfile); release (if
// set) runs once they are written or dropped.
type reply struct {
	bufs    [][]byte
	release func()
	file    *os.File
	fileOff int64
	fileLen int
}

// sendfileMin is the smallest read sent from the file with sendfile:
// below it the copy costs less than a second system call.
const sendfileMin = 64 << 10

func newTransmission(srv *Server, s *session, c net.Conn, r *bufio.Reader) *transmission {
	var raw syscall.RawConn
	switch c := c.(type) {
	case *net.UnixConn:
		raw, _ = c.SyscallConn()
	case *net.TCPConn:
		raw, _ = c.SyscallConn()
	}
	t := &transmission{raw: raw, srv: srv, s: s, conn: c, r: r, size: s.export.Backend.Size(), budget: semaphore.NewWeighted(connBudget), jobs: make(chan job)}
	if fw, ok := s.export.Backend.(FileWriter); ok && raw != nil {
		t.fw = fw
	}
	return t
}

// run reads requests until DISC, a broken stream or ctx's end. Requests
// run on the connection's workers, so replies leave in completion order;
// run waits for all of them before returning.
func (t *transmission) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		close(t.jobs)
		t.wg.Wait()
		if t.pipe != nil {
			t.pipe.close()
		}
	}()
	var hdr [RequestHeaderSize]byte
	// direct: the last payload came straight from the connection, so the
	// buffer is empty and the next header is read the same way, exactly
	// its 28 bytes. Through the buffer it would read ahead into the next
	// payload, whose bytes would then be copied out of the buffer again.
	direct := false
	for {
		var err error
		if direct && t.r.Buffered() == 0 {
			_, err = io.ReadFull(t.conn, hdr[:])
		} else {
			_, err = io.ReadFull(t.r, hdr[:])
		}
		direct = false
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		req, err := ParseRequest(&hdr)
		if err != nil {
			return err // a broken MUST: the stream cannot be trusted
		}
		t.srv.Stats.Requests.Add(1)
		if req.Type == CmdDisc {
			return nil
		}
		var payload []byte
		var weight int64
		if req.Type == CmdWrite {
			if req.Length > MaxPayload {
				// Stay in step with the stream, then refuse.
				if _, err := io.CopyN(io.Discard, t.r, int64(req.Length)); err != nil {
					return fmt.Errorf("discard oversized write: %w", err)
				}
				t.replyError(req, EOVERFLOW, "write larger than 32 MiB")
				continue
			}
			if t.spliceable(req) {
				if err := t.spliceWrite(ctx, req); err != nil {
					return err
				}
				direct = true
				continue
			}
			weight = int64(req.Length)
			if err := t.budget.Acquire(ctx, weight); err != nil {
				return err
			}
			payload = getBuf(int(req.Length))
			if direct, err = t.readPayload(payload); err != nil {
				putBuf(payload)
				t.budget.Release(weight)
				return fmt.Errorf("read write payload: %w", err)
			}
		} else if req.Type == CmdRead && req.Length <= MaxPayload {
			weight = int64(req.Length)
			if err := t.budget.Acquire(ctx, weight); err != nil {
				return err
			}
		}
		j := job{req: req, payload: payload, weight: weight}
		if t.inline(j) {
			t.run1(ctx, j)
			continue
		}
		t.inflight.Add(1)
		t.dispatch(ctx, j)
	}
}

// directMin is the smallest rest of a payload read straight from the
// connection into its buffer rather than through the connection's read
// buffer (of this size), which would copy it once more.
const directMin = 64 << 10

// readPayload fills p with a write's payload: what the read buffer holds
// already, then the rest straight from the connection if it is large. It
// reports whether it read straight.
func (t *transmission) readPayload(p []byte) (bool, error) {
	n := 0
	if b := t.r.Buffered(); b > 0 {
		n, _ = t.r.Read(p[:min(b, len(p))]) // from the buffer, no system call
	}
	if len(p)-n < directMin {
		_, err := io.ReadFull(t.r, p[n:])
		return false, err
	}
	_, err := io.ReadFull(t.conn, p[n:])
	return true, err
}

// inlineMax is the largest read or write run by the reading goroutine.
const inlineMax = 128 << 10

// inline reports whether j runs on the reading goroutine: a small read or
// write when no other request is in progress or already received. That
// is queue depth 1, where handing the request to a worker and back costs
// two goroutine wake-ups, more than the work; anything that may take long
// (flush, trim, zeroes, large transfers) or that has company goes to the
// workers, so the stream is read on meanwhile.
func (t *transmission) inline(j job) bool {
	if j.req.Type != CmdRead && j.req.Type != CmdWrite || j.req.Length > inlineMax {
		return false
	}
	return t.inflight.Load() == 0 && t.r.Buffered() == 0
}

// run1 runs one request and gives back what it holds.
func (t *transmission) run1(ctx context.Context, j job) {
	t.handle(ctx, j.req, j.payload)
	if j.payload != nil {
		putBuf(j.payload)
	}
	t.budget.Release(j.weight)
}

// dispatch hands j to an idle worker, starting one if none is idle and
// fewer than maxInFlight run, or else waits for one to be free.
func (t *transmission) dispatch(ctx context.Context, j job) {
	select {
	case t.jobs <- j:
		return
	default:
	}
	if t.nworkers < maxInFlight {
		t.nworkers++
		t.wg.Add(1)
		go t.worker(ctx)
	}
	t.jobs <- j
}

// worker runs requests until the connection ends.
func (t *transmission) worker(ctx context.Context) {
	defer t.wg.Done()
	for j := range t.jobs {
		t.run1(ctx, j)
		t.inflight.Add(-1)
	}
}

// check validates req against the export and the negotiated options; a
// refused request gets its error number and a message.
func (t *transmission) check(req Request) (Errno, string) {
	allowed, known := allowedFlags[req.Type]
	if !known {
		return EINVAL, fmt.Sprintf("unknown command %d", uint16(req.Type))
	}
	if req.Flags&^allowed != 0 || (req.Flags&FlagDF != 0 && !t.s.structured) {
		return EINVAL, fmt.Sprintf("flags %#x not valid for %s", uint16(req.Flags), req.Type)
	}
	off, length := int64(req.Offset), int64(req.Length)
	if req.Type == CmdRead && length > MaxPayload {
		return EOVERFLOW, "read larger than 32 MiB"
	}
	writes := req.Type == CmdWrite || req.Type == CmdTrim || req.Type == CmdWriteZeroes
	if writes && t.s.export.ReadOnly {
		return EPERM, "export is read-only"
	}
	inRange := req.Offset <= uint64(t.size) && length <= t.size-off
	if !inRange && req.Type != CmdFlush {
		errno := EINVAL
		if req.Type == CmdWrite || req.Type == CmdWriteZeroes {
			errno = ENOSPC
		}
		return errno, fmt.Sprintf("range [%d, +%d) beyond the %d-byte export", req.Offset, req.Length, t.size)
	}
	return 0, ""
}

// handle validates and executes one request and sends its reply.
func (t *transmission) handle(ctx context.Context, req Request, payload []byte) {
	if errno, msg := t.check(req); errno != 0 {
		t.replyError(req, errno, msg)
		return
	}
	e := t.s.export
	off, length := int64(req.Offset), int64(req.Length)
	var err error
	switch req.Type {
	case CmdRead:
		if fr, ok := e.Backend.(FileReader); ok && t.raw != nil && length >= sendfileMin {
			var f *os.File
			if f, err = fr.ReadFile(ctx, off, length); err == nil {
				t.srv.Stats.BytesRead.Add(length)
				t.send(reply{bufs: [][]byte{t.readHeader(req, int(length))}, file: f, fileOff: off, fileLen: int(length)})
				return
			}
			break
		}
		buf := getBuf(int(length))
		if length > 0 {
			err = e.Backend.ReadAt(ctx, buf, off)
		}
		if err == nil {
			t.srv.Stats.BytesRead.Add(length)
			t.replyRead(req, buf) // the writer returns buf to the pool
			return
		}
		putBuf(buf)
	case CmdWrite:
		if length > 0 {
			err = e.Backend.WriteAt(ctx, payload, off, req.Flags&FlagFUA != 0)
		}
		if err == nil {
			t.srv.Stats.BytesWritten.Add(length)
		}
	case CmdFlush:
		if req.Offset != 0 || req.Length != 0 {
			t.replyError(req, EINVAL, "FLUSH takes no range")
			return
		}
		err = e.Backend.Flush(ctx)
	case CmdTrim:
		if length > 0 {
			err = e.Backend.Trim(ctx, off, length, req.Flags&FlagFUA != 0)
		}
	case CmdWriteZeroes:
		if length > 0 {
			err = e.Backend.Zero(ctx, off, length, ZeroFlags{
				NoHole: req.Flags&FlagNoHole != 0,
				FUA:    req.Flags&FlagFUA != 0,
				Fast:   req.Flags&FlagFastZero != 0,
			})
		}
	case CmdCache:
		if length > 0 {
			err = e.Backend.Cache(ctx, off, length)
		}
	case CmdBlockStatus:
		t.blockStatus(ctx, req)
		return
	}
	if err != nil {
		t.replyError(req, errnoOf(err), err.Error())
		return
	}
	t.replyOK(req)
}

func (t *transmission) blockStatus(ctx context.Context, req Request) {
	if !t.s.structured || len(t.s.contexts) == 0 {
		t.replyError(req, EINVAL, "no metadata context was negotiated")
		return
	}
	if req.Length == 0 {
		t.replyError(req, EINVAL, "BLOCK_STATUS needs a length")
		return
	}
	off, length := int64(req.Offset), int64(req.Length)
	limit := maxDescriptors
	if req.Flags&FlagReqOne != 0 {
		limit = 1
	}
	chunks := make([][]byte, 0, len(t.s.contexts))
	for i, name := range t.s.contexts {
		b := binary.BigEndian.AppendUint32(make([]byte, 0, 64), uint32(i+1))
		covered := int64(0)
		n := 0
		err := t.s.export.Backend.BlockStatus(ctx, name, off, length, func(l int64, flags uint32) bool {
			l = min(l, length-covered)
			if l <= 0 {
				return false
			}
			b = binary.BigEndian.AppendUint32(b, uint32(l))
			b = binary.BigEndian.AppendUint32(b, flags)
			covered += l
			n++
			return n < limit && covered < length
		})
		if err == nil && n == 0 {
			err = fmt.Errorf("no extents for %s at %d", name, off)
		}
		if err != nil {
			t.replyError(req, errnoOf(err), err.Error())
			return
		}
		chunks = append(chunks, b)
	}
	var bufs [][]byte
	for i, b := range chunks {
		flags := uint16(0)
		if i == len(chunks)-1 {
			flags = ReplyFlagDone
		}
		h := AppendStructuredReply(make([]byte, 0, structuredHeaderBytes), flags, ReplyTypeBlockStatus, req.Cookie, uint32(len(b)))
		bufs = append(bufs, h, b)
	}
	t.send(reply{bufs: bufs})
}

// errnoOf maps a backend error onto the protocol's error numbers.
func errnoOf(err error) Errno {
	var en Errno
	switch {
	case errors.As(err, &en):
		return en
	case errors.Is(err, ErrNotFast):
		return ENOTSUP
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ENOSPC
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return EPERM
	case errors.Is(err, syscall.EINVAL):
		return EINVAL
	case errors.Is(err, syscall.ENOMEM):
		return ENOMEM
	case errors.Is(err, context.Canceled):
		return ESHUTDOWN
	}
	return EIO
}

// send queues r and, unless another goroutine is writing already, writes
// every queued reply (see transmission.wmu).
func (t *transmission) send(r reply) {
	t.wmu.Lock()
	t.pending = append(t.pending, r)
	if t.flushing {
		t.wmu.Unlock()
		return
	}
	t.flushing = true
	for len(t.pending) > 0 {
		batch := t.pending
		t.pending = t.spare[:0]
		werr := t.werr
		t.wmu.Unlock()
		if werr == nil {
			if werr = t.write(batch); werr != nil {
				t.conn.Close()
			}
		}
		for i := range batch {
			if batch[i].release != nil {
				batch[i].release()
			}
			batch[i] = reply{}
		}
		t.wmu.Lock()
		if werr != nil {
			t.werr = werr
		}
		t.spare = batch[:0]
	}
	t.flushing = false
	t.wmu.Unlock()
}

// write sends batch: buffers gathered into one vectored write up to each
// reply that carries file data, which follows its header by sendfile.
func (t *transmission) write(batch []reply) error {
	t.nb = t.nb[:0]
	flush := func() error {
		nb := t.nb // WriteTo consumes its receiver
		_, err := nb.WriteTo(t.conn)
		t.nb = t.nb[:0]
		return err
	}
	for _, r := range batch {
		t.nb = append(t.nb, r.bufs...)
		if r.file == nil {
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := t.sendfile(r.file, r.fileOff, r.fileLen); err != nil {
			return err
		}
	}
	return flush()
}

// sendfile sends n bytes of f from off on the connection, waiting on the
// poller while the socket is full. Once a reply's header is out its data
// must follow in full: any failure breaks the stream, and the caller
// closes the connection.
func (t *transmission) sendfile(f *os.File, off int64, n int) error {
	var serr error
	err := t.raw.Write(func(fd uintptr) bool {
		for n > 0 {
			w, err := unix.Sendfile(int(fd), int(f.Fd()), &off, n)
			if w > 0 {
				n -= w
			}
			switch {
			case err == unix.EAGAIN:
				return false // wait until the socket takes more
			case err == unix.EINTR:
			case err != nil:
				serr = fmt.Errorf("sendfile at offset %d: %w", off, err)
				return true
			case w == 0:
				serr = fmt.Errorf("sendfile at offset %d: the file ended %d bytes short", off, n)
				return true
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

func (t *transmission) replyOK(req Request) {
	t.send(reply{bufs: [][]byte{AppendSimpleReply(make([]byte, 0, 16), 0, req.Cookie)}})
}

// readHeader is the header of a read's reply carrying n bytes of data:
// one structured OffsetData chunk, or a simple reply.
func (t *transmission) readHeader(req Request, n int) []byte {
	if !t.s.structured {
		return AppendSimpleReply(make([]byte, 0, 16), 0, req.Cookie)
	}
	h := AppendStructuredReply(make([]byte, 0, structuredHeaderBytes+8), ReplyFlagDone, ReplyTypeOffsetData, req.Cookie, uint32(8+n))
	return binary.BigEndian.AppendUint64(h, req.Offset)
}

// replyRead sends data, then returns it to the buffer pool.
func (t *transmission) replyRead(req Request, data []byte) {
	t.send(reply{bufs: [][]byte{t.readHeader(req, len(data)), data}, release: func() { putBuf(data) }})
}

// replyError sends an error reply: structured for READ and BLOCK_STATUS
// once structured replies are on (the protocol requires it), simple
// otherwise.
func (t *transmission) replyError(req Request, errno Errno, msg string) {
	t.srv.Stats.Errors.Add(1)
	var b []byte
	if t.s.structured && (req.Type == CmdRead || req.Type == CmdBlockStatus) {
		if len(msg) > 4096 {
			msg = msg[:4096]
		}
		b = AppendStructuredReply(nil, ReplyFlagDone, ReplyTypeError, req.Cookie, uint32(6+len(msg)))
		b = binary.BigEndian.AppendUint32(b, uint32(errno))
		b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
		b = append(b, msg...)
	} else {
		b = AppendSimpleReply(nil, errno, req.Cookie)
	}
	t.send(reply{bufs: [][]byte{b}})
}

// Payload buffers come from pools by power-of-two size class, so steady
// traffic allocates nothing.
var bufPools [26]sync.Pool // classes 1 B .. 32 MiB

func getBuf(n int) []byte {
	if n == 0 {
		return nil
	}
	c := bits.Len(uint(n - 1))
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<c)
}

func putBuf(b []byte) {
	if cap(b) == 0 || cap(b)&(cap(b)-1) != 0 {
		return
	}
	c := bits.Len(uint(cap(b) - 1))
	if c < len(bufPools) {
		b = b[:cap(b)]
		bufPools[c].Put(&b)
	}
}
