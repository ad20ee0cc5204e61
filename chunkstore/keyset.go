package chunkstore

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
)

// keySet is the set of chunk keys the manifests name, as garbage
// collection's mark builds it, in bounded memory whatever the repository's
// size: keys gather in a buffer of at most max; a full buffer is sorted,
// deduplicated and written out as a run (a private temporary file of
// 16-byte keys in order). The sweep then asks for one shard at a time (the
// keys whose first byte is b, the chunks/<kk>/ directory), merged from the
// runs into one sorted slice: 1/256 of the keys in memory at once.
type keySet struct {
	dir  string
	max  int
	buf  []Key
	runs []*keyRun
	mem  []Key // the only run, when everything fit in the buffer
	n    int   // keys added, duplicates included
}

// keyRun is one sorted run on disk, read forward once.
type keyRun struct {
	f    *os.File
	r    *bufio.Reader
	next Key
	ok   bool
}

func newKeySet(dir string, max int) *keySet {
	if max <= 0 {
		max = markBuffer
	}
	return &keySet{dir: dir, max: max}
}

// markBuffer is the default bound on the keys a mark holds in memory
// before it writes a run: 16 MiB.
const markBuffer = 1 << 20

func (s *keySet) add(k Key) error {
	if s.buf == nil {
		// The whole buffer at once: grown by appends it would leave
		// garbage as large as itself behind.
		s.buf = make([]Key, 0, min(s.max, 64<<10))
	}
	if len(s.buf) == cap(s.buf) && cap(s.buf) < s.max {
		s.buf = slices.Grow(s.buf, min(s.max, 2*cap(s.buf))-len(s.buf))
	}
	s.buf = append(s.buf, k)
	s.n++
	if len(s.buf) >= s.max {
		// Manifests of one volume's chain name mostly the same keys: a
		// full buffer deduplicated often shrinks to a fraction, and only
		// one still more than half full is worth a run on disk.
		s.buf = sortKeys(s.buf)
		if len(s.buf) > s.max/2 {
			return s.flush()
		}
	}
	return nil
}

func sortKeys(ks []Key) []Key {
	slices.SortFunc(ks, func(a, b Key) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(ks)
}

// flush writes the buffer as a run.
func (s *keySet) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	ks := sortKeys(s.buf)
	f, err := os.CreateTemp(s.dir, ".gc-mark-")
	if err != nil {
		return fmt.Errorf("gc mark: %w", err)
	}
	_ = os.Remove(f.Name()) // private; gone at close or crash
	w := bufio.NewWriterSize(f, 1<<20)
	for _, k := range ks {
		if _, err := w.Write(k[:]); err != nil {
			f.Close()
			return fmt.Errorf("gc mark: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("gc mark: %w", err)
	}
	s.runs = append(s.runs, &keyRun{f: f})
	s.buf = s.buf[:0]
	return nil
}

// finish ends the adding: everything is ready for shard.
func (s *keySet) finish() error {
	if len(s.runs) == 0 {
		s.mem = sortKeys(s.buf)
		s.buf = nil
		return nil
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.buf = nil
	for _, r := range s.runs {
		if _, err := r.f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("gc mark: %w", err)
		}
		r.r = bufio.NewReaderSize(r.f, 256<<10)
		if err := r.advance(); err != nil {
			return err
		}
	}
	return nil
}

func (r *keyRun) advance() error {
	_, err := io.ReadFull(r.r, r.next[:])
	switch {
	case err == nil:
		r.ok = true
	case err == io.EOF:
		r.ok = false
	default:
		return fmt.Errorf("gc mark: %w", err)
	}
	return nil
}

// shard returns the sorted keys whose first byte is b, reusing dst. Shards
// must be asked for in increasing order.
func (s *keySet) shard(b byte, dst []Key) ([]Key, error) {
	dst = dst[:0]
	if s.runs == nil {
		i, _ := slices.BinarySearchFunc(s.mem, b, func(k Key, b byte) int { return int(k[0]) - int(b) })
		for ; i < len(s.mem) && s.mem[i][0] == b; i++ {
			dst = append(dst, s.mem[i])
		}
		return dst, nil
	}
	for _, r := range s.runs {
		for r.ok && r.next[0] < b {
			if err := r.advance(); err != nil {
				return nil, err
			}
		}
		for r.ok && r.next[0] == b {
			dst = append(dst, r.next)
			if err := r.advance(); err != nil {
				return nil, err
			}
		}
	}
	if len(s.runs) > 1 {
		dst = sortKeys(dst)
	}
	return dst, nil
}

// close releases the runs.
func (s *keySet) close() {
	for _, r := range s.runs {
		r.f.Close()
	}
	s.runs, s.mem, s.buf = nil, nil, nil
}

// binarySearchKey finds k in sorted keys.
func binarySearchKey(keys []Key, k Key) (int, bool) {
	return slices.BinarySearchFunc(keys, k, func(a, b Key) int { return bytes.Compare(a[:], b[:]) })
}
