package qemu

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

// extent is a range QEMU wrote: data (in the staging file) or zeros.
type extent struct {
	off, end int64
	zero     bool
}

// extentSet is a sorted list of disjoint extents; a newer write replaces
// whatever it overlaps. Staging keeps one per chunk, so a set stays as
// small as the writes into one chunk, however many chunks are written.
type extentSet []extent

func (s *extentSet) add(off, end int64, zero bool) {
	x := *s
	i := sort.Search(len(x), func(i int) bool { return x[i].end > off })
	j := i
	for j < len(x) && x[j].off < end {
		j++
	}
	repl := make([]extent, 0, 3)
	if i < j && x[i].off < off {
		repl = append(repl, extent{x[i].off, off, x[i].zero})
	}
	repl = append(repl, extent{off, end, zero})
	if i < j && x[j-1].end > end {
		repl = append(repl, extent{end, x[j-1].end, x[j-1].zero})
	}
	out := make([]extent, 0, len(x)-(j-i)+len(repl))
	out = append(append(append(out, x[:i]...), repl...), x[j:]...)
	// Neighbours of one kind merge: sequential writes become one extent.
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && merged[n-1].end == e.off && merged[n-1].zero == e.zero {
			merged[n-1].end = e.end
			continue
		}
		merged = append(merged, e)
	}
	*s = merged
}

// staging holds what QEMU's backup job writes: data in a sparse file
// (unlinked, private to the process), zeros as extents only.
type staging struct {
	f         *os.File
	size      int64
	chunkSize int64

	mu     sync.Mutex
	chunks map[int64]*extentSet // by chunk index
	// written counts the bytes QEMU sent, data and zeros.
	written, zeroed int64
}

func newStaging(dir string, size int64, chunkSize int) (*staging, error) {
	f, err := os.CreateTemp(dir, ".qemu-staging-")
	if err != nil {
		return nil, fmt.Errorf("staging file: %w", err)
	}
	// Nobody else needs its name: gone at close, or at a crash.
	_ = os.Remove(f.Name())
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("staging file: %w", err)
	}
	return &staging{f: f, size: size, chunkSize: int64(chunkSize), chunks: map[int64]*extentSet{}}, nil
}

func (s *staging) Close() error { return s.f.Close() }

// record notes that QEMU wrote [off, end), split by chunk. The caller
// holds mu.
func (s *staging) record(off, end int64, zero bool) {
	for off < end {
		i := off / s.chunkSize
		e := min(end, (i+1)*s.chunkSize)
		set := s.chunks[i]
		if set == nil {
			set = &extentSet{}
			s.chunks[i] = set
		}
		set.add(off, e, zero)
		off = e
	}
}

// changed lists what QEMU wrote, as extents for dataplane.PlanBackup.
func (s *staging) changed() []dataplane.Extent {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := make([]int64, 0, len(s.chunks))
	for i := range s.chunks {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var out []dataplane.Extent
	for _, i := range idx {
		for _, e := range *s.chunks[i] {
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == e.off {
				out[n-1].Length += e.end - e.off
				continue
			}
			out = append(out, dataplane.Extent{Offset: e.off, Length: e.end - e.off})
		}
	}
	return out
}

// overlay copies what QEMU wrote over [off, off+len(p)) into p and says
// which bytes it covered, in order.
func (s *staging) overlay(p []byte, off int64) (covered int64, err error) {
	end := off + int64(len(p))
	var parts []extent
	s.mu.Lock()
	for c := off / s.chunkSize; c*s.chunkSize < end; c++ {
		if set := s.chunks[c]; set != nil {
			for _, e := range *set {
				if e.end > off && e.off < end {
					parts = append(parts, e)
				}
			}
		}
	}
	s.mu.Unlock()
	for _, e := range parts {
		a, b := max(e.off, off), min(e.end, end)
		dst := p[a-off : b-off]
		if e.zero {
			clear(dst)
		} else if _, err := s.f.ReadAt(dst, a); err != nil {
			return covered, fmt.Errorf("staging file: %w", err)
		}
		covered += b - a
	}
	return covered, nil
}

// sink is the NBD export QEMU's backup job writes into.
type sink struct{ st *staging }

var _ nbd.Backend = sink{}

func (k sink) Size() int64 { return k.st.size }

func (k sink) ReadAt(_ context.Context, p []byte, off int64) error {
	clear(p)
	_, err := k.st.overlay(p, off)
	return err
}

func (k sink) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	if _, err := k.st.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("staging file: %w", err)
	}
	k.st.mu.Lock()
	k.st.record(off, off+int64(len(p)), false)
	k.st.written += int64(len(p))
	k.st.mu.Unlock()
	return nil
}

// Flush has nothing to do: the backup is durable when its manifest is,
// and the staging file is scratch.
func (k sink) Flush(context.Context) error { return nil }

// Trim is taken as zeros: a backup target is only ever discarded where the
// source reads as zeros.
func (k sink) Trim(ctx context.Context, off, length int64, _ bool) error {
	return k.Zero(ctx, off, length, nbd.ZeroFlags{})
}

func (k sink) Zero(_ context.Context, off, length int64, _ nbd.ZeroFlags) error {
	// Free what an earlier write of the range took; the extent says zeros.
	_ = unix.Fallocate(int(k.st.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	k.st.mu.Lock()
	k.st.record(off, off+length, true)
	k.st.written += length
	k.st.zeroed += length
	k.st.mu.Unlock()
	return nil
}

func (k sink) Cache(context.Context, int64, int64) error { return nil }
func (k sink) MetaContexts() []string                    { return nil }
func (k sink) BlockStatus(context.Context, string, int64, int64, func(int64, uint32) bool) error {
	return fmt.Errorf("no metadata contexts")
}
