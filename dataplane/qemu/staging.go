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

	// Streaming (full backups): chunks are cut while QEMU still sends.
	// cond (on mu) wakes readers waiting for a chunk to be complete;
	// consumed chunks are dropped from the file; pending is what is
	// staged and not consumed; waiting counts the readers that wait
	// (flow control never pauses QEMU while one does); ended is set when
	// QEMU's job is over; late is a write into a consumed chunk.
	cond *sync.Cond
	// mem keeps the data of a streamed backup in memory, a buffer per
	// chunk, instead of the file: it is cut within moments of arriving,
	// and flow control bounds how much waits.
	mem      map[int64][]byte
	consumed map[int64]bool
	pending  int64
	peak     int64 // the most pending ever
	// nudge wakes flow control at once when pending crosses high (the
	// QEMU job runs at disk speed: a poll would let it run far ahead).
	nudge   chan struct{}
	high    int64
	waiting int
	ended   bool
	late    error
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
	s := &staging{f: f, size: size, chunkSize: int64(chunkSize), chunks: map[int64]*extentSet{}, consumed: map[int64]bool{}, nudge: make(chan struct{}, 1)}
	s.cond = sync.NewCond(&s.mu)
	return s, nil
}

// inMemory makes the staging keep data in memory (streamed backups).
func (s *staging) inMemory() {
	s.mu.Lock()
	s.mem = map[int64][]byte{}
	s.mu.Unlock()
}

var chunkBufs sync.Pool // *[]byte of any chunk size

func getBuf(n int64) []byte {
	if bp, ok := chunkBufs.Get().(*[]byte); ok && int64(cap(*bp)) >= n {
		return (*bp)[:n]
	}
	return make([]byte, n)
}

func putBuf(b []byte) { chunkBufs.Put(&b) }

// write stores data QEMU sent at off: in the chunk buffers, or the file.
func (s *staging) write(p []byte, off int64) error {
	s.mu.Lock()
	if s.mem == nil {
		s.mu.Unlock()
		if _, err := s.f.WriteAt(p, off); err != nil {
			return fmt.Errorf("staging file: %w", err)
		}
		s.mu.Lock()
	} else {
		for q, o := p, off; len(q) > 0; {
			i := o / s.chunkSize
			n := min(int64(len(q)), (i+1)*s.chunkSize-o)
			if !s.consumed[i] {
				b := s.mem[i]
				if b == nil {
					b = getBuf(s.chunkLen(i))
					s.mem[i] = b
				}
				copy(b[o-i*s.chunkSize:], q[:n])
			}
			q, o = q[n:], o+n
		}
	}
	s.record(off, off+int64(len(p)), false)
	s.written += int64(len(p))
	s.mu.Unlock()
	return nil
}

// readData copies staged data of [off, off+len(p)) into p; the caller
// holds mu for the buffers, not for the file.
func (s *staging) readData(p []byte, off int64) error {
	if s.mem != nil {
		for q, o := p, off; len(q) > 0; {
			i := o / s.chunkSize
			n := min(int64(len(q)), (i+1)*s.chunkSize-o)
			if b := s.mem[i]; b != nil {
				copy(q[:n], b[o-i*s.chunkSize:])
			} else {
				clear(q[:n])
			}
			q, o = q[n:], o+n
		}
		return nil
	}
	if _, err := s.f.ReadAt(p, off); err != nil {
		return fmt.Errorf("staging file: %w", err)
	}
	return nil
}

// chunkLen is the length of chunk i.
func (s *staging) chunkLen(i int64) int64 { return min(s.chunkSize, s.size-i*s.chunkSize) }

// covered is how many bytes of chunk i QEMU sent; the caller holds mu.
func (s *staging) covered(i int64) int64 {
	var n int64
	if set := s.chunks[i]; set != nil {
		for _, e := range *set {
			n += e.end - e.off
		}
	}
	return n
}

// end says QEMU's job is over: waiting readers get what there is.
func (s *staging) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.cond.Broadcast()
}

// waitCovered waits until QEMU sent all of [off, end) or its job ended.
func (s *staging) waitCovered(ctx context.Context, off, end int64) error {
	stop := context.AfterFunc(ctx, s.cond.Broadcast)
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiting++
	defer func() { s.waiting-- }()
	for {
		if s.late != nil {
			return s.late
		}
		complete := true
		for c := off / s.chunkSize; c*s.chunkSize < end; c++ {
			if s.covered(c) < s.chunkLen(c) {
				complete = false
				break
			}
		}
		if complete || s.ended {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		s.cond.Wait()
	}
}

// consume drops the chunks of [off, end) once read: their space goes back
// to the file system, so a full backup stages only what QEMU sends ahead.
func (s *staging) consume(off, end int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := off / s.chunkSize; c*s.chunkSize < end; c++ {
		if s.consumed[c] {
			continue
		}
		s.consumed[c] = true
		s.pending -= s.covered(c)
		delete(s.chunks, c)
		if b := s.mem[c]; b != nil {
			delete(s.mem, c)
			putBuf(b)
		} else if s.mem == nil {
			_ = unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, c*s.chunkSize, s.chunkLen(c))
		}
	}
}

func (s *staging) Close() error { return s.f.Close() }

// record notes that QEMU wrote [off, end), split by chunk. The caller
// holds mu.
func (s *staging) record(off, end int64, zero bool) {
	for off < end {
		i := off / s.chunkSize
		e := min(end, (i+1)*s.chunkSize)
		if s.consumed[i] {
			// Cut already: a write now would be lost. QEMU sends each
			// range once, so this is a bug to report, never to hide.
			if s.late == nil {
				s.late = fmt.Errorf("QEMU wrote [%d, %d) after its chunk was stored", off, e)
			}
			off = e
			continue
		}
		set := s.chunks[i]
		if set == nil {
			set = &extentSet{}
			s.chunks[i] = set
		}
		before := s.covered(i)
		set.add(off, e, zero)
		after := s.covered(i)
		s.pending += after - before
		s.peak = max(s.peak, s.pending)
		if s.high > 0 && s.pending > s.high && s.waiting == 0 {
			select {
			case s.nudge <- struct{}{}:
			default:
			}
		}
		if after == s.chunkLen(i) {
			s.cond.Broadcast()
		}
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
	inMem := s.mem != nil
	for c := off / s.chunkSize; c*s.chunkSize < end; c++ {
		if set := s.chunks[c]; set != nil {
			for _, e := range *set {
				if e.end > off && e.off < end {
					parts = append(parts, e)
				}
			}
		}
	}
	if !inMem {
		s.mu.Unlock()
	}
	for _, e := range parts {
		a, b := max(e.off, off), min(e.end, end)
		dst := p[a-off : b-off]
		if e.zero {
			clear(dst)
		} else if err := s.readData(dst, a); err != nil {
			return covered, err
		}
		covered += b - a
	}
	if inMem {
		s.mu.Unlock()
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
	return k.st.write(p, off)
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
	k.st.mu.Lock()
	if k.st.mem == nil {
		_ = unix.Fallocate(int(k.st.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	}
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
