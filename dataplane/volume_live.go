package dataplane

import (
	"context"
	"encoding/json"
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

	"github.com/volback/volback/nbd"
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

	// lastWrite is when a client last wrote, in nanotime units.
	lastWrite atomic.Int64

	// restore is set while the volume is filled from a backup.
	restore atomic.Pointer[liveRestore]

	// onFreeze, if set, runs while a backup holds writes off at its
	// freeze point (tests capture the volume's content there).
	onFreeze func()
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

// Size implements nbd.Backend.
func (v *Volume) Size() int64 { return v.size }

// Path returns the backing file or device.
func (v *Volume) Path() string { return v.path }

// ReadAt implements nbd.Backend.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.ensureRestored(ctx, off, int64(len(p))); err != nil {
		return err
	}
	return readFull(v.f, p, off)
}

// beforeWrite preserves old data for running backups and marks the maps.
// The caller holds gate for reading.
func (v *Volume) beforeWrite(off, length int64) error {
	v.lastWrite.Store(nanotime())
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

// WriteAt implements nbd.Backend.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.ensureRestored(ctx, off, int64(len(p))); err != nil {
		return err
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	if err := v.beforeWrite(off, int64(len(p))); err != nil {
		return err
	}
	if _, err := v.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return unix.Fdatasync(int(v.f.Fd()))
	}
	return nil
}

// Flush implements nbd.Backend: one fdatasync covers the writes of every
// connection, since they all go to this file.
func (v *Volume) Flush(context.Context) error {
	if v.restore.Load() != nil {
		// Syncs, then records the chunks restored so far as done: a
		// flushed write on a restored chunk is never copied over.
		return v.saveRestore()
	}
	return unix.Fdatasync(int(v.f.Fd()))
}

// Trim implements nbd.Backend by punching a hole; where the filesystem
// cannot, trimming is a no-op (it is only a hint).
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	if err := v.ensureRestored(ctx, off, length); err != nil {
		return err
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	if err := v.beforeWrite(off, length); err != nil {
		return err
	}
	err := unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil && !errors.Is(err, syscall.EOPNOTSUPP) {
		return err
	}
	if fua {
		return unix.Fdatasync(int(v.f.Fd()))
	}
	return nil
}

// Zero implements nbd.Backend: a hole where holes are allowed, an
// allocated zero range with NoHole, written zeros only as a slow fallback
// (refused when the client asked for a fast zero).
func (v *Volume) Zero(ctx context.Context, off, length int64, f nbd.ZeroFlags) error {
	if err := v.ensureRestored(ctx, off, length); err != nil {
		return err
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	if err := v.beforeWrite(off, length); err != nil {
		return err
	}
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if f.NoHole || v.block {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(int(v.f.Fd()), mode, off, length)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL) {
		if f.Fast {
			return nbd.ErrNotFast
		}
		err = v.writeZeros(off, length)
	}
	if err != nil {
		return err
	}
	if f.FUA {
		return unix.Fdatasync(int(v.f.Fd()))
	}
	return nil
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

// Cache implements nbd.Backend as a readahead hint.
func (v *Volume) Cache(_ context.Context, off, length int64) error {
	_ = unix.Fadvise(int(v.f.Fd()), off, length, unix.FADV_WILLNEED)
	return nil
}

// MetaContexts implements nbd.Backend: base:allocation and one
// qemu:dirty-bitmap:<chain> per backup chain.
func (v *Volume) MetaContexts() []string {
	v.gate.RLock()
	defer v.gate.RUnlock()
	out := []string{nbd.MetaBaseAllocation}
	names := make([]string, 0, len(v.chains))
	for n := range v.chains {
		names = append(names, nbd.MetaDirtyBitmapSpace+n)
	}
	sort.Strings(names)
	return append(out, names...)
}

// BlockStatus implements nbd.Backend.
func (v *Volume) BlockStatus(_ context.Context, meta string, off, length int64, fn func(int64, uint32) bool) error {
	if meta == nbd.MetaBaseAllocation {
		return v.allocation(off, length, fn)
	}
	if len(meta) > len(nbd.MetaDirtyBitmapSpace) && meta[:len(nbd.MetaDirtyBitmapSpace)] == nbd.MetaDirtyBitmapSpace {
		v.gate.RLock()
		c := v.chains[meta[len(nbd.MetaDirtyBitmapSpace):]]
		v.gate.RUnlock()
		if c == nil {
			return fmt.Errorf("no dirty bitmap %q: %w", meta, syscall.EINVAL)
		}
		return c.bitmap.Runs(off, length, func(_, l int64, dirty bool) bool {
			flags := uint32(0)
			if dirty {
				flags = nbd.StateDirty
			}
			return fn(l, flags)
		})
	}
	return fmt.Errorf("unknown metadata context %q: %w", meta, syscall.EINVAL)
}

// allocation reports data and holes with SEEK_DATA/SEEK_HOLE. Block
// devices and filesystems without hole support report all data.
func (v *Volume) allocation(off, length int64, fn func(int64, uint32) bool) error {
	end := off + length
	fd := int(v.f.Fd())
	for off < end {
		if v.block || v.restore.Load() != nil {
			// Holes in the file of a volume being restored are chunks
			// not copied yet: all of it is data.
			fn(end-off, 0)
			return nil
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			// No data from off to the end of the file: one hole.
			fn(end-off, nbd.StateHole|nbd.StateZero)
			return nil
		}
		if err != nil {
			fn(end-off, 0)
			return nil
		}
		if data > off {
			if !fn(min(data, end)-off, nbd.StateHole|nbd.StateZero) {
				return nil
			}
			off = data
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		if !fn(min(hole, end)-off, 0) {
			return nil
		}
		off = min(hole, end)
	}
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

// The state file: JSON, written with temp file + fsync + rename.
type volumeState struct {
	Version     int          `json:"version"`
	Volume      string       `json:"volume"`
	Size        int64        `json:"size"`
	Granularity int64        `json:"granularity"`
	InUse       bool         `json:"inUse"`
	ModTime     time.Time    `json:"modTime,omitempty"`
	Chains      []chainState `json:"chains"`
}

type chainState struct {
	Name       string `json:"name"`
	LastBackup string `json:"lastBackup,omitempty"`
	Invalid    string `json:"invalid,omitempty"`
	Bitmap     []byte `json:"bitmap"`
}

func (v *Volume) loadState() error {
	b, err := os.ReadFile(v.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("volume %s: read changed-block state: %w", v.ID, err)
	}
	var st volumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("volume %s: changed-block state %s: %w", v.ID, v.statePath, err)
	}
	reason := ""
	switch {
	case st.InUse:
		reason = "the volume was not closed cleanly (crash or kill), so its changed-block map may have missed writes"
	case st.Size != v.size:
		reason = fmt.Sprintf("the volume's size changed from %d to %d bytes while it was not served", st.Size, v.size)
	case !v.block && !st.ModTime.IsZero():
		if fi, err := v.f.Stat(); err == nil && !fi.ModTime().Equal(st.ModTime) {
			reason = "the volume's file was modified while it was not served"
		}
	}
	for _, cs := range st.Chains {
		bm, err := NewDirtyMap(v.size, v.gran)
		if err != nil {
			return err
		}
		c := &chain{bitmap: bm, lastBackup: cs.LastBackup, invalid: cs.Invalid}
		if reason == "" && st.Granularity == v.gran {
			if err := bm.UnmarshalBinary(cs.Bitmap); err != nil {
				c.invalid = "the saved changed-block map is unreadable: " + err.Error()
			}
		} else if reason != "" {
			c.invalid = reason
		} else {
			c.invalid = "the changed-block map granularity changed"
		}
		v.chains[cs.Name] = c
	}
	return nil
}

// saveState writes the state file while the volume is in use. Writers
// keep running: the read lock only keeps the chain list still, and the
// maps' bits are read atomically.
func (v *Volume) saveState(inUse bool) error {
	if v.statePath == "" {
		return nil
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	return v.saveStateLocked(inUse)
}

// saveStateLocked writes the state file; the caller holds gate.
func (v *Volume) saveStateLocked(inUse bool) error {
	v.stateMu.Lock()
	defer v.stateMu.Unlock()
	st := volumeState{Version: 1, Volume: v.ID, Size: v.size, Granularity: v.gran, InUse: inUse}
	if fi, err := v.f.Stat(); err == nil && !inUse {
		st.ModTime = fi.ModTime()
	}
	for name, c := range v.chains {
		b, _ := c.bitmap.MarshalBinary()
		st.Chains = append(st.Chains, chainState{Name: name, LastBackup: c.lastBackup, Invalid: c.invalid, Bitmap: b})
	}
	sort.Slice(st.Chains, func(i, j int) bool { return st.Chains[i].Name < st.Chains[j].Name })
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(v.statePath, b); err != nil {
		return fmt.Errorf("volume %s: save changed-block state: %w", v.ID, err)
	}
	return nil
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

var _ nbd.Backend = (*Volume)(nil)
var _ io.ReaderAt = (*snapshot)(nil)

var clockBase = time.Now()

// nanotime is a monotonic clock reading, cheap enough for every write.
func nanotime() int64 { return int64(time.Since(clockBase)) }
