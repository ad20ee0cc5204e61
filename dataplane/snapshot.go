package dataplane

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
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
// began. Blocks are 4 KiB pages, so random small writes save only what
// they overwrite; runs of blocks are read with one preadv. Once read, a chunk costs writers one atomic load.
//
// Saved blocks live in pooled buffers (a guest rewriting the volume during
// a backup would otherwise fault in fresh memory for every block), indexed
// per chunk, so saving a block takes the chunk's lock only. Beyond memLimit
// they spill to an unlinked temporary file, so a guest that rewrites the
// whole volume during a slow backup cannot exhaust the host's memory.
type snapshot struct {
	v         *Volume
	chunkSize int64
	perChunk  int64 // blocks per chunk
	chunks    []cowChunk

	arena *blockArena

	spillMu   sync.Mutex
	spill     *os.File
	spillDir  string
	spillNext int64
	spillErr  error

	preserved atomic.Int64 // bytes of old data saved
}

type cowChunk struct {
	state atomic.Uint32 // stateIdle, statePending, stateDone
	mu    sync.Mutex
	saved []savedBlock // per block of the chunk; nil until a write comes
}

const (
	stateIdle    = 0
	statePending = 1
	stateDone    = 2
)

type savedBlock struct {
	buf      []byte // arena block, or nil
	spillOff int64  // offset in the spill file when spilled
	n        int    // bytes saved; 0 = nothing saved
}

// spillBufs holds staging buffers for blocks on their way to the spill file.
var spillBufs = sync.Pool{New: func() any { return new([]byte) }}

// defaultCowMemory bounds saved blocks in memory per snapshot.
const defaultCowMemory = 256 << 20

func newSnapshot(v *Volume, chunkSize int, toRead []int, spillDir string) *snapshot {
	n := (v.size + int64(chunkSize) - 1) / int64(chunkSize)
	s := &snapshot{
		v: v, chunkSize: int64(chunkSize), perChunk: (int64(chunkSize) + cowBlock - 1) / cowBlock,
		chunks: make([]cowChunk, n), arena: newBlockArena(cowBlock, defaultCowMemory), spillDir: spillDir,
	}
	for _, i := range toRead {
		s.chunks[i].state.Store(statePending)
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
		ch := &s.chunks[c]
		if ch.state.Load() != statePending {
			continue
		}
		ch.mu.Lock()
		err := s.preserveLocked(c, ch, off, length)
		ch.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshot) preserveLocked(c int64, ch *cowChunk, off, length int64) error {
	if ch.state.Load() != statePending {
		return nil
	}
	if ch.saved == nil {
		ch.saved = make([]savedBlock, s.perChunk)
	}
	base := c * s.chunkSize
	lo := max(off, base)
	hi := min(off+length, base+s.chunkSize, s.v.size)
	first := (lo - base) / cowBlock
	last := (hi - 1 - base) / cowBlock
	for b := first; b <= last; {
		if ch.saved[b].n > 0 {
			b++ // saved by an earlier write
			continue
		}
		// A run of unsaved blocks, read with one preadv.
		e := b
		for e <= last && e-b < maxRun && ch.saved[e].n == 0 {
			e++
		}
		if err := s.saveRun(ch, base, b, e); err != nil {
			return err
		}
		b = e
	}
	return nil
}

// cowBlock is the unit of copy-before-write: a page, so that a 4 KiB
// random write saves 4 KiB, not a whole changed-block-map block.
const cowBlock = 4096

// maxRun bounds the blocks read by one preadv (256 KiB).
const maxRun = 64

// saveRun saves blocks [b, e) of the chunk at base into arena blocks, or
// the spill file once memory is at its limit.
func (s *snapshot) saveRun(ch *cowChunk, base, b, e int64) error {
	off := base + b*cowBlock
	end := min(base+e*cowBlock, s.v.size)
	var iov [maxRun][]byte
	bufs, err := s.arena.getN(iov[:0], int(e-b))
	if err != nil {
		return err
	}
	if len(bufs) == 0 {
		return s.spillRun(ch, base, b, e)
	}
	// The last block of the volume may be short.
	last := len(bufs) - 1
	bufs[last] = bufs[last][:min(cowBlock, end-(base+(e-1)*cowBlock))]
	// preadvFull consumes its slice; keep the blocks' own headers.
	var rd [maxRun][]byte
	if err := preadvFull(s.v.f, append(rd[:0], bufs...), off); err != nil {
		s.arena.putN(bufs)
		return fmt.Errorf("copy-before-write of volume %s at %d: %w", s.v.ID, off, err)
	}
	for i, x := range bufs {
		ch.saved[b+int64(i)] = savedBlock{buf: x, n: len(x)}
	}
	s.preserved.Add(end - off)
	return nil
}

func (s *snapshot) spillRun(ch *cowChunk, base, b, e int64) error {
	off := base + b*cowBlock
	end := min(base+e*cowBlock, s.v.size)
	tp := spillBufs.Get().(*[]byte)
	defer spillBufs.Put(tp)
	if int64(len(*tp)) < end-off {
		*tp = make([]byte, maxRun*cowBlock)
	}
	tmp := (*tp)[:end-off]
	if err := readFull(s.v.f, tmp, off); err != nil {
		return fmt.Errorf("copy-before-write of volume %s at %d: %w", s.v.ID, off, err)
	}
	at, err := s.spillBlock(tmp)
	if err != nil {
		return err
	}
	for i := b; i < e; i++ {
		rel := (i - b) * cowBlock
		n := min(cowBlock, end-off-rel)
		ch.saved[i] = savedBlock{spillOff: at + rel, n: int(n)}
	}
	s.preserved.Add(end - off)
	return nil
}

// preadvFull fills bufs from consecutive offsets starting at off.
func preadvFull(f *os.File, bufs [][]byte, off int64) error {
	fd := int(f.Fd())
	for len(bufs) > 0 {
		n, err := unix.Preadv(fd, bufs, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		if n == 0 {
			return fmt.Errorf("read at %d: unexpected end of volume", off)
		}
		off += int64(n)
		for n > 0 && len(bufs) > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
	}
	return nil
}

func (s *snapshot) spillBlock(data []byte) (int64, error) {
	s.spillMu.Lock()
	defer s.spillMu.Unlock()
	if s.spillErr != nil {
		return 0, s.spillErr
	}
	if s.spill == nil {
		f, err := os.CreateTemp(s.spillDir, "volback-cow-*")
		if err != nil {
			s.spillErr = fmt.Errorf("copy-before-write spill file: %w", err)
			return 0, s.spillErr
		}
		os.Remove(f.Name()) // unlinked: it vanishes with the process
		s.spill = f
	}
	at := s.spillNext
	if _, err := s.spill.WriteAt(data, at); err != nil {
		return 0, fmt.Errorf("copy-before-write spill: %w", err)
	}
	s.spillNext += int64(len(data))
	return at, nil
}

// ReadAt reads one whole planned chunk as it was at the freeze. The
// backup engine reads each planned chunk exactly once, chunk-aligned.
func (s *snapshot) ReadAt(p []byte, off int64) (int, error) {
	c := off / s.chunkSize
	if off%s.chunkSize != 0 || c >= int64(len(s.chunks)) {
		return 0, fmt.Errorf("snapshot read at %d: not a chunk boundary", off)
	}
	ch := &s.chunks[c]
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.state.Load() != statePending {
		return 0, fmt.Errorf("snapshot read of chunk %d: not planned or already read", c)
	}
	if err := readFull(s.v.f, p, off); err != nil {
		return 0, err
	}
	var done [][]byte
	defer func() { s.arena.putN(done) }()
	for i := range ch.saved {
		sb := &ch.saved[i]
		if sb.n == 0 {
			continue
		}
		at := int64(i) * cowBlock
		if at >= int64(len(p)) {
			break
		}
		dst := p[at : at+int64(sb.n)]
		if sb.buf != nil {
			copy(dst, sb.buf[:sb.n])
			done = append(done, sb.buf)
		} else if _, err := s.spill.ReadAt(dst, sb.spillOff); err != nil {
			return 0, fmt.Errorf("copy-before-write spill read: %w", err)
		}
	}
	ch.saved = nil
	ch.state.Store(stateDone)
	return len(p), nil
}

func (s *snapshot) close() {
	s.arena.release()
	s.spillMu.Lock()
	defer s.spillMu.Unlock()
	if s.spill != nil {
		s.spill.Close()
		s.spill = nil
	}
}
