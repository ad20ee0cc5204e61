// Copyright © 2017 VMware, Inc. All Rights Reserved.
// SPDX-License-Identifier: BSD-2-Clause
package rpc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/willscott/go-nfs-client/nfs/util"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

const (
	MsgAccepted = iota
	MsgDenied
)

const (
	Success = iota
	ProgUnavail
	ProgMismatch
	ProcUnavail
	GarbageArgs
	SystemErr
)

const (
	RpcMismatch = iota
)

var xid uint32

func init() {
	// seed the XID (which is set by the client)
	xid = rand.New(rand.NewSource(time.Now().UnixNano())).Uint32()
}

var DefaultReadTimeout = time.Second * 5

type Client struct {
	*tcpTransport
	sync.Mutex
	network    string
	addr       string
	privileged bool
	localIP    net.IP
	timeout    time.Duration
	retries    int

	closed  bool
	replies map[uint32]chan io.ReadSeeker
}

func isAddrInUse(err error) bool {
	if er, ok := (err.(*net.OpError)); ok {
		if syser, ok := er.Err.(*os.SyscallError); ok {
			return syser.Err == syscall.EADDRINUSE
		}
	}
	return false
}

// DialOptions configures DialTCPWith.
type DialOptions struct {
	// Privileged binds the local port below 1024 (servers may demand it).
	Privileged bool
	// LocalIP, if set, is the source address of the connection.
	LocalIP net.IP
	// Timeout is how long a call waits for its reply before it is sent
	// again (default DefaultReadTimeout).
	Timeout time.Duration
	// Retries bounds how many times a call is sent, or waits for a
	// connection, before it fails (default 100).
	Retries int
}

func DialTCP(network string, addr string, privileged bool) (*Client, error) {
	return DialTCPWith(network, addr, DialOptions{Privileged: privileged})
}

// DialTCPWith connects to an RPC server with the given options.
func DialTCPWith(network string, addr string, o DialOptions) (*Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultReadTimeout
	}
	if o.Retries <= 0 {
		o.Retries = 100
	}
	c := &Client{
		network:    network,
		addr:       addr,
		privileged: o.Privileged,
		localIP:    o.LocalIP,
		timeout:    o.Timeout,
		retries:    o.Retries,
		replies:    make(map[uint32]chan io.ReadSeeker),
	}
	if t, err := c.connect(); err != nil {
		return nil, err
	} else {
		c.tcpTransport = t
	}
	go c.receive()
	return c, nil
}

func (c *Client) pickLdr() *net.TCPAddr {
	if c.privileged {
		r1 := rand.New(rand.NewSource(time.Now().UnixNano()))
		p := r1.Intn(1023) + 1
		return &net.TCPAddr{IP: c.localIP, Port: p}
	}

	// Let the kernel pick a free ephemeral port.
	return &net.TCPAddr{IP: c.localIP}
}

type message struct {
	Xid     uint32
	Msgtype uint32
	Body    interface{}
}

func (c *Client) receive() {
	for {
		c.Lock()
		if c.closed {
			c.Unlock()
			break
		}
		t := c.tcpTransport
		c.Unlock()
		if t == nil {
			var err error
			t, err = c.connect()
			if err != nil {
				time.Sleep(time.Millisecond * 100)
				continue
			}
			c.Lock()
			c.tcpTransport = t
			c.Unlock()
		}
		res, err := t.recv()
		if err != nil {
			util.Debugf("nfs rpc: recv got error: %s", err)
			c.disconnect()
			continue
		}
		xid, err := xdr.ReadUint32(res)
		if err != nil {
			c.disconnect()
			continue
		}

		// The reply goes to its call under the lock, and the call leaves
		// the map with it: each channel (buffered, one slot) gets one
		// value at most, from here or from disconnect, and never blocks.
		c.Lock()
		r, ok := c.replies[xid]
		if ok {
			delete(c.replies, xid)
			r <- res
		}
		c.Unlock()
		if !ok {
			util.Errorf("received unexpected response with xid: %x", xid)
		}
	}
}

func (c *Client) connect() (*tcpTransport, error) {
	a, err := net.ResolveTCPAddr(c.network, c.addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTCP(a.Network(), c.pickLdr(), a)
	for err != nil && isAddrInUse(err) && c.privileged {
		// bind error, pick a new port
		conn, err = net.DialTCP(a.Network(), c.pickLdr(), a)
	}
	if err != nil {
		return nil, err
	}
	util.Debugf("connected with local %s -> remote %s", conn.LocalAddr(), c.addr)
	return &tcpTransport{
		r:  bufio.NewReader(conn),
		wc: conn,
	}, nil
}

func (c *Client) disconnect() {
	c.Lock()
	defer c.Unlock()
	if c.tcpTransport != nil {
		c.tcpTransport.Close()
		c.tcpTransport = nil
	}
	// Each waiting call wakes with nothing and retries; its channel leaves
	// the map with it, so nothing else sends on it.
	for xid, r := range c.replies {
		r <- nil
		delete(c.replies, xid)
	}
}

func (c *Client) Close() {
	c.Lock()
	c.closed = true
	c.Unlock()
	c.disconnect()
}

func (c *Client) Call(call interface{}) (io.ReadSeeker, error) {
	msg := &message{
		Xid:  atomic.AddUint32(&xid, 1),
		Body: call,
	}
	w := new(bytes.Buffer)
	if err := xdr.Write(w, msg); err != nil {
		return nil, err
	}

	retries := 0
	garbage := false
retry:
	retries++
	if retries > c.retries {
		return nil, errors.New("disconnected")
	}

	c.Lock()
	if c.closed {
		c.Unlock()
		return nil, errors.New("client closed")
	}
	if c.tcpTransport == nil {
		c.Unlock()
		time.Sleep(time.Millisecond * 100)
		goto retry
	}
	if _, err := c.Write(w.Bytes()); err != nil {
		c.Unlock()
		c.disconnect()
		goto retry
	}
	reply := make(chan io.ReadSeeker, 1)
	c.replies[msg.Xid] = reply
	c.Unlock()

	var res io.ReadSeeker
	select {
	case res = <-reply:
	case <-time.After(c.timeout):
	}

	c.Lock()
	delete(c.replies, msg.Xid)
	c.Unlock()

	if res == nil {
		goto retry
	}

	out, err := parseReply(res)
	if errors.Is(err, errGarbageArgs) && !garbage {
		// emulate Linux behaviour for GARBAGE_ARGS
		util.Debugf("Retrying on GARBAGE_ARGS per linux semantics")
		garbage = true
		goto retry
	}
	return out, err
}

var errGarbageArgs = errors.New("rpc: GARBAGE_ARGS - rpc arguments cannot be XDR decoded")

// parseReply reads an RPC reply's header (after the xid) and returns the
// reader at the procedure's results, or the error the reply carries.
// Whatever the server sent, it returns: it never panics.
func parseReply(res io.ReadSeeker) (io.ReadSeeker, error) {
	mtype, err := xdr.ReadUint32(res)
	if err != nil {
		return nil, err
	}
	if mtype != 1 {
		return nil, fmt.Errorf("message as not a reply: %d", mtype)
	}

	status, err := xdr.ReadUint32(res)
	if err != nil {
		return nil, err
	}

	switch status {
	case MsgAccepted:

		// padding
		_, err = xdr.ReadUint32(res)
		if err != nil {
			return nil, fmt.Errorf("truncated RPC reply: %w", err)
		}

		opaque_len, err := xdr.ReadUint32(res)
		if err != nil {
			return nil, fmt.Errorf("truncated RPC reply: %w", err)
		}

		if l, ok := res.(interface{ Len() int }); ok && int64(opaque_len) > int64(l.Len()) {
			return nil, fmt.Errorf("truncated RPC reply: a verifier of %d bytes", opaque_len)
		}
		_, err = res.Seek(int64(opaque_len), io.SeekCurrent)
		if err != nil {
			return nil, fmt.Errorf("truncated RPC reply: %w", err)
		}

		acceptStatus, err := xdr.ReadUint32(res)
		if err != nil {
			return nil, fmt.Errorf("truncated RPC reply: %w", err)
		}

		switch acceptStatus {
		case Success:
			return res, nil
		case ProgUnavail:
			return nil, fmt.Errorf("rpc: PROG_UNAVAIL - server does not recognize the program number")
		case ProgMismatch:
			return nil, fmt.Errorf("rpc: PROG_MISMATCH - program version does not exist on the server")
		case ProcUnavail:
			return nil, fmt.Errorf("rpc: PROC_UNAVAIL - unrecognized procedure number")
		case GarbageArgs:
			return nil, errGarbageArgs
		case SystemErr:
			return nil, fmt.Errorf("rpc: SYSTEM_ERR - unknown error on server")
		default:
			return nil, fmt.Errorf("rpc: unknown accepted status error: %d", acceptStatus)
		}

	case MsgDenied:
		rejectStatus, err := xdr.ReadUint32(res)
		if err != nil {
			return nil, fmt.Errorf("truncated RPC reply: %w", err)
		}
		switch rejectStatus {
		case RpcMismatch:
			return nil, fmt.Errorf("rpc: RPC_MISMATCH - the server does not speak RPC version 2")
		default:
			return nil, fmt.Errorf("rejectedStatus was not valid: %d", rejectStatus)
		}

	default:
		return nil, fmt.Errorf("rejectedStatus was not valid: %d", status)
	}
}
