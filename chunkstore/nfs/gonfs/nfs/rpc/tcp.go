// Copyright © 2017 VMware, Inc. All Rights Reserved.
// SPDX-License-Identifier: BSD-2-Clause
package rpc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

type tcpTransport struct {
	r       io.Reader
	wc      net.Conn
	timeout time.Duration
}

// Get the response from the conn, buffer the contents, and return a reader to
// it.
//
// A record may come in several fragments (RFC 5531, record marking): they
// are joined until the one marked last. A record longer than maxRecord is
// an error, so a broken or hostile server cannot make the client allocate
// what it likes.
func (t *tcpTransport) recv() (io.ReadSeeker, error) {
	return readRecord(t.r)
}

// maxRecord bounds one reply: the largest READ (1 MiB rsize) with room to
// spare for a READDIRPLUS of many entries.
const maxRecord = 64 << 20

func readRecord(r io.Reader) (*bytes.Reader, error) {
	var buf []byte
	for {
		var hdr uint32
		if err := binary.Read(r, binary.BigEndian, &hdr); err != nil {
			return nil, err
		}
		n := int(hdr & 0x7fffffff)
		if len(buf)+n > maxRecord {
			return nil, fmt.Errorf("rpc: a reply of more than %d bytes", maxRecord)
		}
		at := len(buf)
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(r, buf[at:]); err != nil {
			return nil, err
		}
		if hdr&0x80000000 != 0 {
			return bytes.NewReader(buf), nil
		}
	}
}

func (t *tcpTransport) Write(buf []byte) (int, error) {
	var hdr uint32 = uint32(len(buf)) | 0x80000000
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, hdr)
	if t.timeout != 0 {
		deadline := time.Now().Add(t.timeout)
		t.wc.SetWriteDeadline(deadline)
	}
	n, err := t.wc.Write(append(b, buf...))

	return n, err
}

func (t *tcpTransport) Close() error {
	return t.wc.Close()
}

func (t *tcpTransport) SetTimeout(d time.Duration) {
	t.timeout = d
	if d == 0 {
		var zeroTime time.Time
		t.wc.SetDeadline(zeroTime)
	}
}
