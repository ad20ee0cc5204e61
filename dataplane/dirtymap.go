package dataplane

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// DirtyMap is a changed-block bitmap: one bit per granularity-sized block
// of a volume, set when any byte of the block is written, trimmed or
// zeroed. Marking is lock-free (atomic OR per 64-block word), so writers on
// every NBD connection mark concurrently without contention.
type DirtyMap struct {
	size  int64
	gran  int64
	shift uint
	words []atomic.Uint64
}

// DefaultGranularity is QEMU's default dirty-bitmap granularity.
const DefaultGranularity = 64 << 10

// NewDirtyMap returns an empty map for a volume of size bytes. gran must
// be a power of two of at least 512.
func NewDirtyMap(size, gran int64) (*DirtyMap, error) {
	if gran < 512 || gran&(gran-1) != 0 {
		return nil, fmt.Errorf("dirty map granularity %d: want a power of two >= 512", gran)
	}
	blocks := (size + gran - 1) / gran
	return &DirtyMap{size: size, gran: gran, shift: uint(bits.TrailingZeros64(uint64(gran))), words: make([]atomic.Uint64, (blocks+63)/64)}, nil
}

// Granularity returns the block size the map tracks.
func (d *DirtyMap) Granularity() int64 { return d.gran }

// Mark records a write to [off, off+length).
func (d *DirtyMap) Mark(off, length int64) {
	if length <= 0 {
		return
	}
	first := off >> d.shift
	last := (off + length - 1) >> d.shift
	for b := first; b <= last; {
		w := b >> 6
		lo := uint(b & 63)
		hi := uint(min(last-(w<<6), 63))
		mask := ^uint64(0) >> (63 - hi) & (^uint64(0) << lo)
		d.words[w].Or(mask)
		b = (w + 1) << 6
	}
}

// Or adds every block marked in o, which must have the same geometry.
func (d *DirtyMap) Or(o *DirtyMap) {
	for i := range d.words {
		if v := o.words[i].Load(); v != 0 {
			d.words[i].Or(v)
		}
	}
}

// DirtyBytes returns the number of bytes in marked blocks.
func (d *DirtyMap) DirtyBytes() int64 {
	var n int64
	for i := range d.words {
		n += int64(bits.OnesCount64(d.words[i].Load()))
	}
	n *= d.gran
	// The last block may be shorter than the granularity.
	if last := (d.size - 1) >> d.shift; d.size > 0 && d.isSet(last) {
		n -= (last+1)<<d.shift - d.size
	}
	return n
}

func (d *DirtyMap) isSet(b int64) bool {
	return d.words[b>>6].Load()&(1<<uint(b&63)) != 0
}

// Extents returns the marked ranges, merged and clipped to the volume.
func (d *DirtyMap) Extents() []Extent {
	var out []Extent
	_ = d.Runs(0, d.size, func(off, length int64, dirty bool) bool {
		if dirty {
			out = append(out, Extent{Offset: off, Length: length})
		}
		return true
	})
	if out == nil {
		out = []Extent{}
	}
	return out
}

// Runs calls fn for maximal runs of equally marked bytes from off to
// off+length, until fn returns false.
func (d *DirtyMap) Runs(off, length int64, fn func(off, length int64, dirty bool) bool) error {
	end := min(off+length, d.size)
	for off < end {
		b := off >> d.shift
		dirty := d.isSet(b)
		// Extend the run block by block, skipping whole words at once.
		n := b + 1
		blocks := (d.size + d.gran - 1) >> d.shift
		for n < blocks && n<<d.shift < end {
			if n&63 == 0 {
				w := d.words[n>>6].Load()
				if (dirty && w == ^uint64(0)) || (!dirty && w == 0) {
					n += 64
					continue
				}
			}
			if d.isSet(n) != dirty {
				break
			}
			n++
		}
		runEnd := min(n<<d.shift, end)
		if !fn(off, runEnd-off, dirty) {
			return nil
		}
		off = runEnd
	}
	return nil
}

// MarshalBinary encodes the words little-endian.
func (d *DirtyMap) MarshalBinary() ([]byte, error) {
	b := make([]byte, 8*len(d.words))
	for i := range d.words {
		binary.LittleEndian.PutUint64(b[8*i:], d.words[i].Load())
	}
	return b, nil
}

// UnmarshalBinary loads words written by MarshalBinary for the same
// geometry.
func (d *DirtyMap) UnmarshalBinary(b []byte) error {
	if len(b) != 8*len(d.words) {
		return fmt.Errorf("dirty map: %d bytes, want %d", len(b), 8*len(d.words))
	}
	for i := range d.words {
		d.words[i].Store(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return nil
}
