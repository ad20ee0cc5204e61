package dataplane

import (
	"fmt"
	"io"
	"os"
)

// OpenVolume opens a regular file or block device for reading and returns
// it with its size in bytes.
func OpenVolume(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("volume %s: %w", path, err)
	}
	size, err := volumeSize(f)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("volume %s: %w", path, err)
	}
	return f, size, nil
}

// volumeSize returns the size of a regular file or block device. A block
// device's Stat size is 0; seeking to its end gives its capacity.
func volumeSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	switch m := st.Mode(); {
	case m.IsRegular():
		return st.Size(), nil
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("size of block device: %w", err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, err
		}
		return n, nil
	default:
		return 0, fmt.Errorf("not a regular file or block device (mode %v)", m)
	}
}

func isBlockDevice(st os.FileInfo) bool {
	m := st.Mode()
	return m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0
}

// readFull reads len(b) bytes at off, failing if the volume ends first.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("read %d bytes at offset %d: volume ended after %d (did it shrink?)", len(b), off, n)
	}
	return fmt.Errorf("read %d bytes at offset %d: %w", len(b), off, err)
}
