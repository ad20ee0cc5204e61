// Copyright © 2017 VMware, Inc. All Rights Reserved.
// SPDX-License-Identifier: BSD-2-Clause

package xdr

import (
	"fmt"
	"io"

	xdr "github.com/rasky/go-xdr/xdr2"
)

// maxRead bounds a variable-length item a reply may declare when the
// reader cannot say how much it holds: a broken or hostile server cannot
// make the client allocate more than that.
const maxRead = 64 << 20

// limit is how many bytes one item read from r may take: what r still
// holds (a reply is buffered whole), at most maxRead.
func limit(r io.Reader) uint {
	if l, ok := r.(interface{ Len() int }); ok && l.Len() < maxRead {
		return uint(l.Len()) + 1 // 0 would mean no limit
	}
	return maxRead
}

func Read(r io.Reader, val interface{}) error {
	_, err := xdr.UnmarshalLimited(r, val, limit(r))
	return err
}

func ReadUint32(r io.Reader) (uint32, error) {
	var n uint32
	if err := Read(r, &n); err != nil {
		return n, err
	}

	return n, nil
}

func ReadOpaque(r io.Reader) ([]byte, error) {
	length, err := ReadUint32(r)
	if err != nil {
		return nil, err
	}

	if uint(length) > limit(r) {
		return nil, fmt.Errorf("xdr: opaque of %d bytes is longer than the reply", length)
	}
	buf := make([]byte, length)
	if _, err = io.ReadFull(r, buf); err != nil {
		return nil, err
	}

	return buf, nil
}

func ReadUint32List(r io.Reader) ([]uint32, error) {
	length, err := ReadUint32(r)
	if err != nil {
		return nil, err
	}

	if uint(length)*4 > limit(r) {
		return nil, fmt.Errorf("xdr: list of %d values is longer than the reply", length)
	}
	buf := make([]uint32, length)

	for i := 0; i < int(length); i++ {
		buf[i], err = ReadUint32(r)
		if err != nil {
			return nil, err
		}
	}

	return buf, nil
}
