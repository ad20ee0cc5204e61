package dataplane

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// A snapshot gives a backup the volume as it was when the backup froze its
// chain, while clients keep writing (copy-before-write).
//
// Only the chunks the backup plans to read are tracked. A write to such a
// chunk, before the backup has read it, first saves the old content of the
// granularity-sized blocks it overwrites. The backup reads a chunk under
// the chunk's lock and lays the saved blocks over what it read, so a write
// that is in flight during the read cannot leak into the backup: every
// block a writer touches was saved, under the same lock, before the write
// began. Once read, a chunk costs writers one atomic load.
//
// Saved blocks stay in memory up to memLimit, then spill to a temporary
// file, so a guest that rewrites the whole volume during a slow backup
// cannot exhaust the host's memory.
type snapshot struct {
	v         *Volume
	chunkSize int64
	state     []atomic.Uint32 // per chunk: stateIdle, statePending, stateDone
	locks     []sync.Mutex

	mu        sync.Mutex
	saved     map[int64]savedBlock // block index -> its old content
	memBytes  int64
	memLimit  int64
	spill     *os.File
	spillDir  string
	spillNext int64
	// PreservedBytes counts old data saved for the backup.
	preserved atomic.Int64
}

const (
	stateIdle    = 0
	statePending = 1
	stateDone    = 2
)

type savedBlock struct {
	data []byte // in memory, or nil when spilled
	off  int64  // offset in the spill file
	n    int
}

// defaultCowMemory bounds saved blocks in memory per snapshot.
const defaultCowMemory = 256 << 20

func newSnapshot(v *Volume, chunkSize int, toRead []int, spillDir string) *snapshot {
	n := (v.size + int64(chunkSize) - 1) / int64(chunkSize)
	s := &snapshot{
		v: v, chunkSize: int64(chunkSize),
		state: make([]atomic.Uint32, n), locks: make([]sync.Mutex, n),
		saved: make(map[int64]savedBlock), memLimit: defaultCowMemory, spillDir: spillDir,
	}
	for _, i := range toRead {
		s.state[i].Store(statePending)
	}
	return s
}

// preserve saves the old content of every block in [off, off+length) that
// lies in a chunk the backup has yet to read. Called with v.gate held for
// reading, before the write.
func (s *snapshot) preserve(off, length int64) error {
	if length <= 0 {
		return nil
	}
	first := off / s.chunkSize
	last := (off + length - 1) / s.chunkSize
	for c := first; c <= last; c++ {
		if s.state[c].Load() != statePending {
			continue
		}
		s.locks[c].Lock()
		err := s.preserveInChunkLocked(c, off, length)
		s.locks[c].Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshot) preserveInChunkLocked(c, off, length int64) error {
	if s.state[c].Load() != statePending {
		return nil
	}
	gran := s.v.gran
	lo := max(off, c*s.chunkSize)
	hi := min(off+length, (c+1)*s.chunkSize, s.v.size)
	for b := lo / gran; b*gran < hi; b++ {
		s.mu.Lock()
		_, have := s.saved[b]
		s.mu.Unlock()
		if have {
			continue
		}
		boff := b * gran
		n := int(min(gran, s.v.size-boff))
		buf := make([]byte, n)
		if err := readFull(s.v.f, buf, boff); err != nil {
			return fmt.Errorf("copy-before-write of volume %s at %d: %w", s.v.ID, boff, err)
		}
		if err := s.store(b, buf); err != nil {
			return err
		}
		s.preserved.Add(int64(n))
	}
	return nil
}

func (s *snapshot) store(b int64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.memBytes+int64(len(data)) <= s.memLimit {
		s.saved[b] = savedBlock{data: data, n: len(data)}
		s.memBytes += int64(len(data))
		return nil
	}
	if s.spill == nil {
		f, err := os.CreateTemp(s.spillDir, "volback-cow-*")
		if err != nil {
			return fmt.Errorf("copy-before-write spill file: %w", err)
		}
		os.Remove(f.Name()) // unlinked: vanishes with the process
		s.spill = f
	}
	if _, err := s.spill.WriteAt(data, s.spillNext); err != nil {
		return fmt.Errorf("copy-before-write spill: %w", err)
	}
	s.saved[b] = savedBlock{off: s.spillNext, n: len(data)}
	s.spillNext += int64(len(data))
	return nil
}

// ReadAt reads one whole planned chunk as it was at the freeze. The
// backup engine reads each planned chunk exactly once, chunk-aligned.
func (s *snapshot) ReadAt(p []byte, off int64) (int, error) {
	c := off / s.chunkSize
	if off%s.chunkSize != 0 || c >= int64(len(s.state)) {
		return 0, fmt.Errorf("snapshot read at %d: not a chunk boundary", off)
	}
	s.locks[c].Lock()
	defer s.locks[c].Unlock()
	if s.state[c].Load() != statePending {
		return 0, fmt.Errorf("snapshot read of chunk %d: not planned or already read", c)
	}
	if err := readFull(s.v.f, p, off); err != nil {
		return 0, err
	}
	gran := s.v.gran
	end := off + int64(len(p))
	s.mu.Lock()
	defer s.mu.Unlock()
	for b := off / gran; b*gran < end; b++ {
		sb, ok := s.saved[b]
		if !ok {
			continue
		}
		dst := p[b*gran-off : b*gran-off+int64(sb.n)]
		if sb.data != nil {
			copy(dst, sb.data)
			s.memBytes -= int64(sb.n)
		} else if _, err := s.spill.ReadAt(dst, sb.off); err != nil {
			return 0, fmt.Errorf("copy-before-write spill read: %w", err)
		}
		delete(s.saved, b)
	}
	s.state[c].Store(stateDone)
	return len(p), nil
}

func (s *snapshot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.spill != nil {
		s.spill.Close()
		s.spill = nil
	}
	s.saved = nil
}
