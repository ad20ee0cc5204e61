package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Error is an error answer of QEMU.
type Error struct {
	Who     string // the client's Name
	Command string
	Class   string // GenericError, CommandNotFound, DeviceNotFound, ...
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Who, e.Command, e.Desc)
}

// ErrClosed is returned once the connection is gone.
var ErrClosed = errors.New("QMP connection closed")

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// Client is one QMP connection. It is safe for concurrent use.
type Client struct {
	// Name is how errors name the process ("VM 0f3c... (qmp.sock)").
	Name    string
	Version Version

	conn net.Conn
	wmu  sync.Mutex
	w    *bufio.Writer

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	subs    map[int]*subscription
	nextSub int
	done    chan struct{}
	err     error
}

type subscription struct {
	match func(Event) bool
	ch    chan Event
}

type message struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID        string          `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
}

// maxMessage bounds one QMP message: query answers of a large VM are a few
// hundred KiB.
const maxMessage = 16 << 20

// Dial connects to the QMP Unix socket at path, reads the greeting and
// leaves capabilities negotiation mode.
func Dial(ctx context.Context, path, name string) (*Client, error) {
	if name == "" {
		name = "QEMU at " + path
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Client{Name: name, conn: conn, w: bufio.NewWriter(conn), pending: map[string]chan message{}, subs: map[int]*subscription{}, done: make(chan struct{})}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), maxMessage)
	// The greeting comes first, before anything is asked.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	} else {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	if !sc.Scan() {
		conn.Close()
		err := sc.Err()
		if err == nil {
			err = errors.New("closed before its greeting")
		}
		return nil, fmt.Errorf("%s: QMP greeting: %w", name, err)
	}
	var g message
	if err := json.Unmarshal(sc.Bytes(), &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("%s: not a QMP greeting: %.80q", name, sc.Bytes())
	}
	v := g.QMP.Version
	c.Version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	_ = conn.SetReadDeadline(time.Time{})
	go c.readLoop(sc)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) readLoop(sc *bufio.Scanner) {
	var err error
	for sc.Scan() {
		var m message
		if e := json.Unmarshal(sc.Bytes(), &m); e != nil {
			err = fmt.Errorf("%s: bad QMP message %.80q: %w", c.Name, sc.Bytes(), e)
			break
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			c.deliver(ev)
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err == nil {
		err = ErrClosed
	} else {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%s: %w", c.Name, err)
	for _, s := range c.subs {
		close(s.ch)
	}
	c.subs = map[int]*subscription{}
	c.mu.Unlock()
	close(c.done)
}

// deliver hands an event to every subscriber that wants it. A subscriber
// that does not keep up loses events rather than stalling the connection;
// its channel is generously buffered.
func (c *Client) deliver(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.subs {
		if s.match == nil || s.match(ev) {
			select {
			case s.ch <- ev:
			default:
			}
		}
	}
}

// Subscribe returns a channel of the events match accepts (nil: all),
// closed when the connection ends, and a function that ends the
// subscription. Subscribe before running the command whose events you
// wait for.
func (c *Client) Subscribe(match func(Event) bool) (<-chan Event, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan Event, 256)
	select {
	case <-c.done:
		close(ch)
		return ch, func() {}
	default:
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = &subscription{match: match, ch: ch}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s, ok := c.subs[id]; ok {
			delete(c.subs, id)
			close(s.ch)
		}
	}
}

// Execute runs cmd with args (nil for none) and decodes its return value
// into result (nil to ignore it). A cancelled ctx abandons the wait, not
// the command: QEMU runs it all the same.
func (c *Client) Execute(ctx context.Context, cmd string, args any, result any) error {
	return c.execute(ctx, cmd, args, result, nil)
}

// SendFile hands f's descriptor to QEMU under name (QMP getfd), for a
// later command that takes a file descriptor by name, such as an NBD
// client's server of type fd. QEMU holds its own copy: f may be closed
// afterwards.
func (c *Client) SendFile(ctx context.Context, name string, f *os.File) error {
	return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, unix.UnixRights(int(f.Fd())))
}

func (c *Client) execute(ctx context.Context, cmd string, args any, result any, oob []byte) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := "vb-" + strconv.FormatUint(c.nextID, 10)
	ch := make(chan message, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		// A typed nil (a nil map) is no arguments too, not null.
		if a, err := json.Marshal(args); err == nil && string(a) != "null" {
			req["arguments"] = json.RawMessage(a)
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("%s: %s: %w", c.Name, cmd, err)
	}
	c.wmu.Lock()
	if oob == nil {
		_, err = c.w.Write(append(b, '\n'))
		if err == nil {
			err = c.w.Flush()
		}
	} else if uc, ok := c.conn.(*net.UnixConn); !ok {
		err = errors.New("file descriptors pass only over a Unix socket")
	} else if err = c.w.Flush(); err == nil {
		// The descriptor travels with the command's own bytes, which QEMU
		// reads as one message.
		_, _, err = uc.WriteMsgUnix(append(b, '\n'), oob, nil)
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("%s: %s: %w", c.Name, cmd, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return &Error{Who: c.Name, Command: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("%s: %s: unexpected answer %.120q: %w", c.Name, cmd, m.Return, err)
			}
		}
		return nil
	case <-c.done:
		return c.err
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("%s: %s: %w", c.Name, cmd, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Done is closed when the connection ends; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
