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
// chunks that lie wholly in holes: a backup records them as zero chunks
// without reading them, as qemu-img skips them. It returns nil where there
// are none or the file system cannot say (no SEEK_DATA, a block device):
// every chunk is read, and zeros are still found by content.
func holeChunks(f *os.File, size int64, chunkSize int) []bool {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil
	}
	cs := int64(chunkSize)
	n := (size + cs - 1) / cs
	var holes []bool
	pos := int64(0)
	seekAllocation(int(f.Fd()), 0, size, func(length int64, hole bool) bool {
		from, to := pos, pos+length
		pos = to
		if !hole {
			return true
		}
		if holes == nil {
			holes = make([]bool, n)
		}
		for i := (from + cs - 1) / cs; i < n && min((i+1)*cs, size) <= to; i++ {
			holes[i] = true
		}
		return true
	})
	return holes
}

// seekAllocation calls fn for consecutive data and hole extents of the file
// fd within [off, end), from SEEK_DATA/SEEK_HOLE, until fn returns false.
// Where the file system cannot say, the rest is reported as data.
func seekAllocation(fd int, off, end int64, fn func(length int64, hole bool) bool) {
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			fn(end-off, true) // no data from off to the end of the file
			return
		}
		if err != nil {
			fn(end-off, false)
			return
		}
		if data > off {
			if !fn(min(data, end)-off, true) {
				return
			}
			off = data
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		if !fn(min(hole, end)-off, false) {
			return
		}
		off = min(hole, end)
	}
}
