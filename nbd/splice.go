package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// spliceMin is the smallest write whose payload is spliced from the
// socket into the file: below it one copy through a buffer costs less
// than the pipe's two system calls.
const spliceMin = 64 << 10

// pipeSize is the pipe capacity asked for: a 256 KiB payload (what
// nbdcopy and QEMU send) in one pair of splices.
const pipeSize = 1 << 20

// pipe is a connection's pipe for splicing payloads: socket to pipe
// moves the socket's pages without copying them, pipe to file copies
// them once into the page cache. Through a buffer the bytes are copied
// twice, and the copy out of the socket was a seventh of the server's
// time under large writes.
type pipe struct {
	r, w int
	size int
}

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe for splice: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	// Without the room for a larger pipe (the per-user pipe limits)
	// the default size still works, in more system calls.
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil {
		p.close()
		return nil, fmt.Errorf("pipe size: %w", err)
	}
	p.size = size
	return p, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// spliceFile moves bytes from the pipe into the file; tests replace it
// to meet a file that takes no splices.
var spliceFile = unix.Splice

// spliceable reports whether req's payload goes from the socket to the
// backend's file by splice: a large write on a plain socket to a backend
// that offers its file.
func (t *transmission) spliceable(req Request) bool {
	if t.fw == nil || t.noSplice || req.Length < spliceMin {
		return false
	}
	if t.pipe == nil {
		p, err := newPipe()
		if err != nil {
			// Out of descriptors or pipe memory: copy as before.
			t.noSplice = true
			return false
		}
		t.pipe = p
	}
	return true
}

// spliceWrite runs a write on the reading goroutine, its payload spliced
// from the socket into the backend's file, and replies. The payload is
// consumed from the stream in every case, so a refused or failed write
// leaves the stream in step; only a broken stream is returned.
//
// Running on the reader serialises one connection's large writes, which
// costs nothing measurable: buffered writes to one file take the inode's
// lock one at a time anyway, and the reader's own work (the splice into
// the pipe) moves no bytes. Clients that want parallel writes open more
// connections (CAN_MULTI_CONN).
func (t *transmission) spliceWrite(ctx context.Context, req Request) error {
	length := int64(req.Length)
	if errno, msg := t.check(req); errno != 0 {
		if _, err := io.CopyN(io.Discard, t.r, length); err != nil {
			return fmt.Errorf("discard refused write: %w", err)
		}
		t.replyError(req, errno, msg)
		return nil
	}
	var moved int64 // payload bytes taken from the stream
	var serr error  // the stream broke: nothing more can be read
	err := t.fw.WriteFile(ctx, int64(req.Offset), length, req.Flags&FlagFUA != 0, func(f *os.File) error {
		off := int64(req.Offset)
		// What the read buffer holds of the payload already.
		if b := t.r.Buffered(); b > 0 {
			head, _ := t.r.Peek(int(min(int64(b), length)))
			if _, err := f.WriteAt(head, off); err != nil {
				return err
			}
			t.r.Discard(len(head))
			moved += int64(len(head))
		}
		n, err := t.spliceInto(f, off+moved, length-moved)
		moved += n
		var se streamError
		if errors.As(err, &se) {
			serr = se.err
		}
		return err
	})
	if serr != nil {
		return fmt.Errorf("read write payload: %w", serr)
	}
	if moved < length {
		// Refused or failed before all of the payload was taken.
		if _, err := io.CopyN(io.Discard, t.r, length-moved); err != nil {
			return fmt.Errorf("discard failed write: %w", err)
		}
	}
	if err != nil {
		t.replyError(req, errnoOf(err), err.Error())
		return nil
	}
	t.srv.Stats.BytesWritten.Add(length)
	t.srv.Stats.BytesSpliced.Add(length)
	t.replyOK(req)
	return nil
}

// streamError marks a failure of the connection, as opposed to the file.
type streamError struct{ err error }

func (e streamError) Error() string { return "connection: " + e.err.Error() }
func (e streamError) Unwrap() error { return e.err }

// spliceInto moves n payload bytes from the connection into f at off
// through the connection's pipe, waiting on the poller while the socket
// is empty, and returns how many it took from the connection. The pipe is
// empty before each splice into it, so EAGAIN always means the socket
// has nothing yet. A file that takes no splices (EINVAL) gets the rest
// of the payload copied, and the connection copies from then on.
func (t *transmission) spliceInto(f *os.File, off, n int64) (int64, error) {
	p := t.pipe
	fd := int(f.Fd())
	var moved int64
	var serr, ferr error
	err := t.raw.Read(func(s uintptr) bool {
		for n > 0 {
			m, err := unix.Splice(int(s), nil, p.w, nil, int(min(n, int64(p.size))), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false // wait until the socket has more
			case err != nil:
				serr = err
				return true
			case m == 0:
				serr = io.ErrUnexpectedEOF
				return true
			}
			moved += m
			n -= m
			if ferr = t.drain(p, fd, &off, m); ferr != nil {
				return true
			}
		}
		return true
	})
	if err != nil && serr == nil && ferr == nil {
		serr = err
	}
	if ferr != nil || serr != nil {
		// The pipe may hold bytes the file did not take.
		p.close()
		t.pipe = nil
	}
	switch {
	case serr != nil:
		return moved, streamError{serr}
	case ferr != nil:
		return moved, fmt.Errorf("write at offset %d: %w", off, ferr)
	}
	return moved, nil
}

// drain writes the m bytes the pipe holds into fd at *off, advancing it.
func (t *transmission) drain(p *pipe, fd int, off *int64, m int64) error {
	for m > 0 {
		if t.noSplice {
			return copyPipe(p, fd, off, m)
		}
		k, err := spliceFile(p.r, nil, fd, off, int(m), unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL:
			// The file takes no splices: copy this payload's rest and
			// read later payloads into buffers.
			t.noSplice = true
			continue
		case err != nil:
			return err
		case k == 0:
			return io.ErrShortWrite
		}
		m -= k
	}
	return nil
}

// copyPipe reads the m bytes in the pipe and writes them at *off.
func copyPipe(p *pipe, fd int, off *int64, m int64) error {
	buf := getBuf(int(m))
	defer putBuf(buf)
	for got := 0; got < len(buf); {
		k, err := unix.Read(p.r, buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		got += k
	}
	for w := 0; w < len(buf); {
		k, err := unix.Pwrite(fd, buf[w:], *off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		w += k
		*off += int64(k)
	}
	return nil
}
