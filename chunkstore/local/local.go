package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
)

// tmpPrefix starts the name of every temporary file; List skips them.
const tmpPrefix = ".tmp-"

// syncWorkers is how many fdatasyncs Sync keeps in flight.
const syncWorkers = 16

// earlySyncs is how many background fdatasyncs Put keeps in flight.
const earlySyncs = 8

// pendingFile is an object written to a temporary file and not yet renamed.
type pendingFile struct {
	tmp string
	// synced is closed when a background fdatasync of tmp has finished,
	// with its result in syncErr; nil if none was started.
	synced  chan struct{}
	syncErr error
}

// Store is a chunkstore.Store in a local directory.
type Store struct {
	root string

	mu      sync.Mutex
	pending map[string]*pendingFile // object name -> its unsynced temporary

	// early bounds the background fdatasyncs that Put starts, so the
	// device works on durability while the caller computes the next
	// object, and Sync mostly finds its work done.
	early chan struct{}

	syncMu sync.Mutex // one Sync at a time; see Sync

	noDirect atomic.Bool // set once the filesystem refuses O_DIRECT
}

var (
	_ chunkstore.Store        = (*Store)(nil)
	_ chunkstore.BufferGetter = (*Store)(nil)
)

// Open returns a Store rooted at dir, creating dir if needed.
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("local store %s: %w", abs, classify(err))
	}
	return &Store{root: abs, pending: make(map[string]*pendingFile), early: make(chan struct{}, earlySyncs)}, nil
}

// Location implements chunkstore.Store.
func (s *Store) Location() string { return "local:" + s.root }

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(name string) (string, error) {
	if err := chunkstore.ValidName(name); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

// classify maps an OS error onto the chunkstore error model: a missing file
// is ErrNotFound, interruptions and busy resources are transient, the rest
// (ENOSPC, EROFS, EACCES, EIO...) cannot succeed on retry and stay permanent.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %w", chunkstore.ErrNotFound, err)
	case errors.Is(err, syscall.EINTR), errors.Is(err, syscall.EAGAIN),
		errors.Is(err, syscall.EBUSY), errors.Is(err, syscall.ETIMEDOUT):
		return chunkstore.Transient(err)
	}
	return err
}

// Put implements chunkstore.Store. It writes a temporary file and leaves the
// rename to Sync.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := s.path(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(final)
	tmp := filepath.Join(dir, tmpPrefix+filepath.Base(final)+"-"+randSuffix())
	err = s.writeFile(tmp, data)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			err = s.writeFile(tmp, data)
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", final, classify(err))
	}
	pf := &pendingFile{tmp: tmp}
	select {
	case s.early <- struct{}{}:
		pf.synced = make(chan struct{})
		go func() {
			pf.syncErr = fdatasync(tmp)
			close(pf.synced)
			<-s.early
		}()
	default: // enough in flight; Sync will do this one
	}
	s.mu.Lock()
	old, had := s.pending[name]
	s.pending[name] = pf
	s.mu.Unlock()
	if had {
		os.Remove(old.tmp)
	}
	return nil
}

// writeFile creates tmp holding data, with O_DIRECT unless this store's
// filesystem has refused it once.
func (s *Store) writeFile(tmp string, data []byte) error {
	if !s.noDirect.Load() {
		err := writeDirect(tmp, data)
		if !errors.Is(err, errNoDirect) {
			return err
		}
		s.noDirect.Store(true)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil && len(data) > 0 {
		// Start writeback now, without waiting, so Sync finds most of
		// the data already on its way to the device.
		_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return werr
}

// open returns the file holding name: the pending temporary if there is
// one, else the final path.
func (s *Store) open(name string) (*os.File, string, error) {
	final, err := s.path(name)
	if err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	pf, ok := s.pending[name]
	s.mu.Unlock()
	if ok {
		f, err := os.Open(pf.tmp)
		if err == nil {
			return f, final, nil
		}
		// Renamed by a Sync since we looked: the final path has it.
	}
	f, err := os.Open(final)
	if err != nil {
		return nil, final, fmt.Errorf("%s: %w", final, classify(err))
	}
	return f, final, nil
}

// Get implements chunkstore.Store.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter.
func (s *Store) GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, p, err := s.open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, classify(err))
	}
	b := chunkstore.Grow(buf, int(st.Size()))
	if _, err := readFull(f, b); err != nil {
		return nil, fmt.Errorf("%s: %w", p, classify(err))
	}
	return b, nil
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.ReadAt(b[n:], int64(n))
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Stat implements chunkstore.Store.
func (s *Store) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	if err := ctx.Err(); err != nil {
		return chunkstore.Info{}, err
	}
	final, err := s.path(name)
	if err != nil {
		return chunkstore.Info{}, err
	}
	s.mu.Lock()
	pf, ok := s.pending[name]
	s.mu.Unlock()
	if ok {
		if st, err := os.Stat(pf.tmp); err == nil {
			return chunkstore.Info{Name: name, Size: st.Size()}, nil
		}
	}
	st, err := os.Stat(final)
	if err != nil {
		return chunkstore.Info{}, fmt.Errorf("%s: %w", final, classify(err))
	}
	if !st.Mode().IsRegular() {
		return chunkstore.Info{}, fmt.Errorf("%s: not a regular file", final)
	}
	return chunkstore.Info{Name: name, Size: st.Size()}, nil
}

// List implements chunkstore.Store. It walks only the directory that
// prefix's last slash names, so listing chunks/ab/ reads one shard.
func (s *Store) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	dirPart := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirPart = prefix[:i]
	}
	start := s.root
	if dirPart != "" {
		if err := chunkstore.ValidName(dirPart); err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		start = filepath.Join(s.root, filepath.FromSlash(dirPart))
	}
	seen := make(map[string]bool)
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a shard that does not exist yet lists nothing
			}
			return classify(err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while we walked
		}
		if err != nil {
			return classify(err)
		}
		seen[name] = true
		return fn(chunkstore.Info{Name: name, Size: info.Size()})
	})
	if err != nil {
		return fmt.Errorf("list %s in %s: %w", prefix, s.root, err)
	}
	// Pending objects are visible to their writer before Sync.
	s.mu.Lock()
	var extra []chunkstore.Info
	for name, pf := range s.pending {
		if strings.HasPrefix(name, prefix) && !seen[name] {
			if st, err := os.Stat(pf.tmp); err == nil {
				extra = append(extra, chunkstore.Info{Name: name, Size: st.Size()})
			}
		}
	}
	s.mu.Unlock()
	for _, info := range extra {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements chunkstore.Store.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := s.path(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	pf, hadPending := s.pending[name]
	delete(s.pending, name)
	s.mu.Unlock()
	if hadPending {
		os.Remove(pf.tmp)
	}
	err = os.Remove(final)
	if err != nil && !(hadPending && errors.Is(err, fs.ErrNotExist)) {
		return fmt.Errorf("delete %s: %w", final, classify(err))
	}
	// Make the removal durable: a deleted manifest must not come back.
	if err := syncDir(filepath.Dir(final)); err != nil {
		return fmt.Errorf("delete %s: %w", final, classify(err))
	}
	return nil
}

// Sync implements chunkstore.Store: fdatasync every pending file, rename
// each to its final name, fsync the directories that changed.
//
// Syncs are serialised. A concurrent caller may have seen an object as
// present through the pending table and relies on its own Sync to make it
// durable; waiting for a running Sync to finish before taking the next batch
// guarantees that every object pending when a Sync starts is durable when it
// returns.
func (s *Store) Sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	// A Put or Delete of a name while its earlier temporary is being synced
	// supersedes it; the newer temporary is then synced in another round.
	for {
		superseded, err := s.syncRound(ctx)
		if err != nil || !superseded {
			return err
		}
	}
}

func (s *Store) stillPending(name string, pf *pendingFile) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending[name] == pf
}

func (s *Store) syncRound(ctx context.Context) (superseded bool, err error) {
	s.mu.Lock()
	batch := make(map[string]*pendingFile, len(s.pending))
	for name, pf := range s.pending {
		batch[name] = pf
	}
	s.mu.Unlock()
	if len(batch) == 0 {
		return false, ctx.Err()
	}

	var skipMu sync.Mutex
	skip := make(map[string]bool)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(syncWorkers)
	for name, pf := range batch {
		g.Go(func() error {
			var err error
			if pf.synced != nil {
				select {
				case <-pf.synced:
					err = pf.syncErr
				case <-gctx.Done():
					return gctx.Err()
				}
			} else {
				if err := gctx.Err(); err != nil {
					return err
				}
				err = fdatasync(pf.tmp)
			}
			if errors.Is(err, chunkstore.ErrNotFound) && !s.stillPending(name, pf) {
				skipMu.Lock()
				skip[name] = true
				skipMu.Unlock()
				return nil
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return false, fmt.Errorf("sync %s: %w", s.root, err)
	}

	dirs := make(map[string]bool)
	for name, pf := range batch {
		if skip[name] {
			continue
		}
		final := filepath.Join(s.root, filepath.FromSlash(name))
		if err := os.Rename(pf.tmp, final); err != nil {
			if errors.Is(err, fs.ErrNotExist) && !s.stillPending(name, pf) {
				skip[name] = true
				continue
			}
			return false, fmt.Errorf("sync %s: rename %s: %w", s.root, final, classify(err))
		}
		// Every directory from the object's up to the root may be new.
		for d := path.Dir(name); ; d = path.Dir(d) {
			dirs[filepath.Join(s.root, filepath.FromSlash(d))] = true
			if d == "." {
				break
			}
		}
	}
	g, _ = errgroup.WithContext(ctx)
	g.SetLimit(syncWorkers)
	for d := range dirs {
		g.Go(func() error { return syncDir(d) })
	}
	if err := g.Wait(); err != nil {
		return false, fmt.Errorf("sync %s: %w", s.root, err)
	}

	s.mu.Lock()
	for name, pf := range batch {
		if s.pending[name] == pf {
			delete(s.pending, name)
		}
	}
	s.mu.Unlock()
	for name := range skip {
		if s.stillPendingAny(name) {
			superseded = true
		}
	}
	return superseded, nil
}

func (s *Store) stillPendingAny(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.pending[name]
	return ok
}

// Close implements chunkstore.Store. Objects put but not synced are dropped.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, pf := range s.pending {
		os.Remove(pf.tmp)
		delete(s.pending, name)
	}
	return nil
}

// RemoveStale deletes temporary files older than age that crashed writers
// left behind. Younger ones may belong to a writer that is still running.
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) (int, error) {
	cutoff := time.Now().Add(-age)
	removed := 0
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.ModTime().After(cutoff) {
			return nil
		}
		if os.Remove(p) == nil {
			removed++
		}
		return nil
	})
	if err != nil {
		return removed, fmt.Errorf("remove stale files in %s: %w", s.root, classify(err))
	}
	return removed, nil
}

func fdatasync(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", p, classify(err))
	}
	err = unix.Fdatasync(int(f.Fd()))
	cerr := f.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fdatasync %s: %w", p, classify(err))
	}
	return nil
}

func syncDir(d string) error {
	f, err := os.Open(d)
	if err != nil {
		return fmt.Errorf("%s: %w", d, classify(err))
	}
	err = f.Sync()
	cerr := f.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", d, classify(err))
	}
	return nil
}

func randSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// OpenRepository opens the repository in directory dir.
func OpenRepository(ctx context.Context, dir string) (*chunkstore.Repository, error) {
	s, err := Open(dir)
	if err != nil {
		return nil, err
	}
	r, err := chunkstore.Open(ctx, s)
	if err != nil {
		s.Close()
		return nil, err
	}
	return r, nil
}

// PutIfAbsent implements chunkstore.Creator: the data goes to a synced
// temporary file that is then hard-linked to its name, which fails if the
// name is taken; the directory is synced before it returns.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := s.path(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", final, classify(err))
	}
	tmp := filepath.Join(dir, tmpPrefix+filepath.Base(final)+"-"+randSuffix())
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", final, classify(err))
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", final, classify(err))
	}
	if err := os.Link(tmp, final); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", final, chunkstore.ErrExists)
	} else if err != nil {
		return fmt.Errorf("create %s: %w", final, classify(err))
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("create %s: %w", final, classify(err))
	}
	return nil
}

// ModeProblem says, for a repository directory made before repositories
// were private (or loosened since), which of its top-level objects other
// local users can reach; "" when none. Repositories made now are 0700
// directories of 0600 files whatever the umask; an existing one is
// reported, not changed: its owner decides.
func ModeProblem(dir string) string {
	var loose []string
	for _, p := range []string{dir, filepath.Join(dir, "config"), filepath.Join(dir, "chunks"), filepath.Join(dir, "manifests")} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			loose = append(loose, fmt.Sprintf("%s is %04o", p, fi.Mode().Perm()))
		}
	}
	if len(loose) == 0 {
		return ""
	}
	return fmt.Sprintf("repository %s is readable by other local users (%s): chmod -R go-rwx %s", dir, strings.Join(loose, ", "), dir)
}
