package local

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
)

// Chunk files are written with O_DIRECT where the filesystem allows it.
// Measured on a virtio disk, buffered writes plus fdatasync reached 390 MiB/s
// and direct 4 MiB writes 900-1150 MiB/s: the page cache only adds a copy
// and a writeback pass for data nobody will read soon. Direct I/O also
// keeps a backup from evicting the page cache that running guests use.
//
// O_DIRECT needs the buffer, offset and length aligned to the device's
// logical block size; 4096 covers every common device. The aligned prefix
// of the data is written straight from the caller's buffer when it is
// aligned (large Go allocations are page-aligned), else through a bounce
// buffer; the tail, less than a block, through the page cache.

const directAlign = 4096

var errNoDirect = errors.New("filesystem does not support O_DIRECT")

// bounceSize is the bounce buffer size: large enough for efficient device
// writes, small enough that a pool of them costs little memory.
const bounceSize = 1 << 20

var bouncePool = sync.Pool{New: func() any {
	b := chunkstore.AlignedBuffer(bounceSize, bounceSize)
	return &b
}}

func isAligned(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%directAlign == 0
}

// writeDirect creates path and writes data to it with O_DIRECT. It returns
// errNoDirect, having created nothing, if the filesystem refuses O_DIRECT.
func writeDirect(path string, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if errors.Is(err, syscall.EINVAL) {
		return errNoDirect
	}
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if errors.Is(err, errNoDirect) {
			os.Remove(path)
		}
	}()
	aligned := len(data) &^ (directAlign - 1)
	if aligned > 0 {
		if isAligned(data) {
			_, err = f.WriteAt(data[:aligned], 0)
		} else {
			bp := bouncePool.Get().(*[]byte)
			for off := 0; off < aligned && err == nil; off += bounceSize {
				n := copy(*bp, data[off:aligned])
				_, err = f.WriteAt((*bp)[:n], int64(off))
			}
			bouncePool.Put(bp)
		}
		if errors.Is(err, syscall.EINVAL) {
			return errNoDirect
		}
		if err != nil {
			return err
		}
	}
	if tail := data[aligned:]; len(tail) > 0 {
		// The tail goes through the page cache: a direct write would
		// have to be padded to a block and the file truncated back,
		// which costs the device a read of that block and a second
		// write (1.4 ms a chunk, measured), where Sync's fdatasync
		// writes this page along with the file's size anyway.
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if err == nil {
			_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl&^syscall.O_DIRECT)
		}
		if err != nil {
			return err
		}
		if _, err = f.WriteAt(tail, int64(aligned)); err != nil {
			return err
		}
	}
	return nil
}
