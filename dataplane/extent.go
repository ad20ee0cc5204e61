package dataplane

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// Extent is a byte range of a volume.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// chunksTouched returns a bitmap (one bool per chunk) of the chunks that any
// extent overlaps. Extents past the end of the volume are an error: a
// changed-block map that disagrees with the volume's size cannot be trusted.
func chunksTouched(extents []Extent, size int64, chunkSize int, nChunks int) ([]bool, error) {
	touched := make([]bool, nChunks)
	sorted := append([]Extent(nil), extents...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	for _, e := range sorted {
		if e.Offset < 0 || e.Length < 0 || e.Offset > size || e.Length > size-e.Offset {
			return nil, fmt.Errorf("changed extent [%d, +%d) outside the %d-byte volume", e.Offset, e.Length, size)
		}
		if e.Length == 0 {
			continue
		}
		first := int(e.Offset / int64(chunkSize))
		last := int((e.Offset + e.Length - 1) / int64(chunkSize))
		for i := first; i <= last; i++ {
			touched[i] = true
		}
	}
	return touched, nil
}

// holeChunks returns, for a regular file f of size bytes, a bitmap of the
// chunks that lie wholly in holes (SEEK_DATA/SEEK_HOLE): a backup records
// them as zero chunks without reading them, as qemu-img skips them. It
// returns nil where the file system cannot say (no SEEK_DATA, a block
// device): every chunk is read, and zeros are still found by content.
func holeChunks(f *os.File, size int64, chunkSize int) []bool {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || size == 0 {
		return nil
	}
	fd := int(f.Fd())
	cs := int64(chunkSize)
	n := int((size + cs - 1) / cs)
	var holes []bool
	mark := func(from, to int64) { // [from, to) is a hole
		if holes == nil {
			holes = make([]bool, n)
		}
		for i := (from + cs - 1) / cs; i < int64(n) && i*cs < to && min((i+1)*cs, size) <= to; i++ {
			holes[i] = true
		}
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			mark(off, size) // no data from off to the end
			break
		}
		if err != nil {
			return nil // no SEEK_DATA here: read everything
		}
		if data > off {
			mark(off, min(data, size))
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil
		}
		off = hole
	}
	return holes
}
