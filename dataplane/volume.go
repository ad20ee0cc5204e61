package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Volume is a live volume: a raw file or block device that NBD clients
// read and write through it, while it keeps one changed-block map per
// backup chain and serves consistent point-in-time reads to backups.
//
// Locking: every write-type call holds gate for reading while it preserves
// old data for running backups, marks the maps and writes; freezing a
// chain for a backup takes gate for writing, which waits for in-flight
// writes to drain and holds new ones off for the few microseconds the
// swap takes. chains and snaps change only under the write lock, so
// writers read them under the read lock without further locking.
type Volume struct {
	ID   string
	path string
	f    *os.File
	size int64
	gran int64
	// block is set for block devices: no holes, no SEEK_DATA.
	block bool
	// statePath holds the chains' maps between runs; "" keeps none.
	statePath string
	stateMu   sync.Mutex // serialises writes of the state file

	gate   sync.RWMutex
	chains map[string]*chain
	snaps  []*snapshot

	mu     sync.Mutex // serialises backups per chain and Close
	busy   map[string]bool
	closed bool

	// lastWrite is when a client last wrote, in nanotime units, kept
	// while pacing counts running live backups (their pace reads it):
	// outside backups writes skip the clock and the shared store.
	lastWrite atomic.Int64
	pacing    atomic.Int32

	// restore is set while the volume is filled from a backup.
	restore atomic.Pointer[liveRestore]

	// onFreeze, if set, runs while a backup holds writes off at its
	// freeze point (tests capture the volume's content there).
	onFreeze func()
	// sleep is time.Sleep, injected so tests count a paced backup's waits.
	sleep func(time.Duration)
}

// chain is the changed-block state for one backup chain (one backup
// storage): the map of blocks written since its last backup, and that
// backup's id.
type chain struct {
	bitmap     *DirtyMap
	lastBackup string
	// invalid is set when the map may have missed writes; the reason is
	// recorded in the next backup's manifest.
	invalid string
}

// VolumeOptions configures OpenLiveVolume.
type VolumeOptions struct {
	// StateDir keeps the changed-block maps between runs; empty keeps
	// none (every first backup after a restart is full).
	StateDir string
	// Granularity of the changed-block maps; 0 means 64 KiB.
	Granularity int64
}

// OpenLiveVolume opens path read-write as volume id.
func OpenLiveVolume(id, path string, opts VolumeOptions) (*Volume, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", id, err)
	}
	size, err := volumeSize(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("volume %s at %s: %w", id, path, err)
	}
	st, _ := f.Stat()
	v := &Volume{ID: id, path: path, f: f, size: size, gran: opts.Granularity, block: isBlockDevice(st),
		chains: make(map[string]*chain), busy: make(map[string]bool)}
	if v.gran == 0 {
		v.gran = DefaultGranularity
	}
	if opts.StateDir != "" {
		if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
			f.Close()
			return nil, fmt.Errorf("volume %s: %w", id, err)
		}
		v.statePath = filepath.Join(opts.StateDir, id+".cbt")
		if err := v.loadState(); err != nil {
			f.Close()
			return nil, err
		}
		// Mark the maps in use: if we die without Close, the next
		// open finds the flag and distrusts them.
		if err := v.saveState(true); err != nil {
			f.Close()
			return nil, err
		}
	}
	return v, nil
}

// Size is the volume's size in bytes.
func (v *Volume) Size() int64 { return v.size }

// Path returns the backing file or device.
func (v *Volume) Path() string { return v.path }

// ReadFile readies [off, off+length) to be read straight from the
// volume's file (a restore in progress copies it in first) and returns the
// file, which stays open until Close.
func (v *Volume) ReadFile(ctx context.Context, off, length int64) (*os.File, error) {
	if err := v.ensureRestored(ctx, off, length); err != nil {
		return nil, err
	}
	return v.f, nil
}

// ReadAt fills p from offset off.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.ensureRestored(ctx, off, int64(len(p))); err != nil {
		return err
	}
	return readFull(v.f, p, off)
}

// beforeWrite preserves old data for running backups and marks the maps.
// The caller holds gate for reading.
func (v *Volume) beforeWrite(off, length int64) error {
	if v.pacing.Load() > 0 {
		v.lastWrite.Store(nanotime())
	}
	for _, s := range v.snaps {
		if err := s.preserve(off, length); err != nil {
			return err
		}
	}
	for _, c := range v.chains {
		c.bitmap.Mark(off, length)
	}
	return nil
}

// modify runs one write-type operation on [off, off+length): the range is
// restored first if the volume is being restored; then, under the write
// gate, running backups keep the old data and the maps are marked before
// do changes the file; with fua the change is durable on return.
func (v *Volume) modify(ctx context.Context, off, length int64, fua bool, do func() error) error {
	if err := v.ensureRestored(ctx, off, length); err != nil {
		return err
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	if err := v.beforeWrite(off, length); err != nil {
		return err
	}
	if err := do(); err != nil {
		return err
	}
	if fua {
		return unix.Fdatasync(int(v.f.Fd()))
	}
	return nil
}

// WriteAt writes p at off; with fua the data is durable on return.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return v.modify(ctx, off, int64(len(p)), fua, func() error {
		_, err := v.f.WriteAt(p, off)
		return err
	})
}

// WriteFile is WriteAt for a payload that fill puts into the volume's
// file at [off, off+length) itself (the NBD server splices it there from
// the socket): the range is readied and the maps marked as for WriteAt,
// then fill runs where WriteAt would write.
func (v *Volume) WriteFile(ctx context.Context, off, length int64, fua bool, fill func(f *os.File) error) error {
	return v.modify(ctx, off, length, fua, func() error { return fill(v.f) })
}

// Flush makes every completed write durable: one fdatasync covers the
// writes of every client, since they all go to this file.
func (v *Volume) Flush(context.Context) error {
	if v.restore.Load() != nil {
		// Syncs, then records the chunks restored so far as done: a
		// flushed write on a restored chunk is never copied over.
		return v.saveRestore()
	}
	return unix.Fdatasync(int(v.f.Fd()))
}

// Trim discards a range by punching a hole; where the filesystem cannot,
// trimming is a no-op (it is only a hint).
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	return v.modify(ctx, off, length, fua, func() error {
		err := unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if errors.Is(err, syscall.EOPNOTSUPP) {
			return nil
		}
		return err
	})
}

// ZeroOptions qualify Volume.Zero.
type ZeroOptions struct {
	NoHole bool // keep the range allocated
	FUA    bool // durable on return
	Fast   bool // fail with ErrNotFast rather than write zeros slowly
}

// ErrNotFast is returned by Zero with Fast set when the range cannot be
// zeroed without writing it.
var ErrNotFast = errors.New("zeroing would not be fast")

// Zero writes zeros over a range: a hole where holes are allowed, an
// allocated zero range with NoHole, written zeros only as a slow fallback
// (refused with ErrNotFast when Fast is asked for).
func (v *Volume) Zero(ctx context.Context, off, length int64, f ZeroOptions) error {
	return v.modify(ctx, off, length, f.FUA, func() error {
		mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
		if f.NoHole || v.block {
			mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
		}
		err := unix.Fallocate(int(v.f.Fd()), mode, off, length)
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL) {
			if f.Fast {
				return ErrNotFast
			}
			err = v.writeZeros(off, length)
		}
		return err
	})
}

var zeroBuf = make([]byte, 1<<20)

func (v *Volume) writeZeros(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := v.f.WriteAt(zeroBuf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Cache is a hint that a range will be read soon.
func (v *Volume) Cache(_ context.Context, off, length int64) error {
	_ = unix.Fadvise(int(v.f.Fd()), off, length, unix.FADV_WILLNEED)
	return nil
}

// DirtyRuns calls fn for consecutive runs of a chain's changed-block map
// from off, covering at most length bytes, until fn returns false. An
// unknown chain is an error wrapping syscall.EINVAL.
func (v *Volume) DirtyRuns(chainName string, off, length int64, fn func(length int64, dirty bool) bool) error {
	v.gate.RLock()
	c := v.chains[chainName]
	v.gate.RUnlock()
	if c == nil {
		return fmt.Errorf("volume %s: no changed-block map %q: %w", v.ID, chainName, syscall.EINVAL)
	}
	return c.bitmap.Runs(off, length, func(_, l int64, dirty bool) bool { return fn(l, dirty) })
}

// Allocation calls fn for consecutive data and hole extents from off,
// covering at most length bytes, until fn returns false, with
// SEEK_DATA/SEEK_HOLE. Block devices, filesystems without hole support
// and volumes being restored report all data.
func (v *Volume) Allocation(off, length int64, fn func(length int64, hole bool) bool) error {
	if length <= 0 {
		return nil
	}
	if v.block || v.restore.Load() != nil {
		// Holes in the file of a volume being restored are chunks
		// not copied yet: all of it is data.
		fn(length, false)
		return nil
	}
	seekAllocation(int(v.f.Fd()), off, off+length, fn)
	return nil
}

// Chains returns the names of the volume's backup chains.
func (v *Volume) Chains() []string {
	v.gate.RLock()
	defer v.gate.RUnlock()
	names := make([]string, 0, len(v.chains))
	for n := range v.chains {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ChainState reports a chain's last backup and, if its map cannot be
// trusted, why.
func (v *Volume) ChainState(name string) (lastBackup, invalid string, dirtyBytes int64, ok bool) {
	v.gate.RLock()
	defer v.gate.RUnlock()
	c := v.chains[name]
	if c == nil {
		return "", "", 0, false
	}
	return c.lastBackup, c.invalid, c.bitmap.DirtyBytes(), true
}

// Close waits for nothing: callers stop their NBD exports and backups
// first. It persists the maps as cleanly closed and closes the file.
func (v *Volume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	v.gate.Lock()
	defer v.gate.Unlock()
	var err error
	if e := unix.Fdatasync(int(v.f.Fd())); e != nil {
		err = fmt.Errorf("volume %s: fdatasync: %w", v.ID, e)
	}
	if e := v.saveRestore(); err == nil && e != nil {
		err = e
	}
	if v.statePath != "" && err == nil {
		err = v.saveStateLocked(false)
	}
	if e := v.f.Close(); err == nil && e != nil {
		err = e
	}
	return err
}

var _ io.ReaderAt = (*snapshot)(nil)

var clockBase = time.Now()

// nanotime is a monotonic clock reading, cheap enough for every write.
func nanotime() int64 { return int64(time.Since(clockBase)) }
