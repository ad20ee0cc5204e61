package chunkstore

import "unsafe"

// bufAlign is the alignment of buffers from AlignedBuffer: a page, which
// satisfies O_DIRECT on every common device.
const bufAlign = 4096

// AlignedBuffer returns a slice of length n and capacity c whose first byte
// is page-aligned.
func AlignedBuffer(n, c int) []byte {
	b := make([]byte, c+bufAlign)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % bufAlign); r != 0 {
		off = bufAlign - r
	}
	return b[off : off+n : off+c]
}
