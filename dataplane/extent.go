package dataplane

import (
	"fmt"
	"sort"
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
