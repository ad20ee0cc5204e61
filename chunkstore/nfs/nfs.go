package nfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gonfs "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/volback/volback/chunkstore"
)

const tmpPrefix = ".tmp-"

// Store is a chunkstore.Store in a directory of an NFSv3 export, reached
// from user space: no kernel client, no mount.
type Store struct {
	o     Options
	loc   string
	root  string // path of the store's directory inside the mounted export
	conns []*gonfs.Target
	mnt   *gonfs.Mount
	next  atomic.Uint32
	dirs  sync.Map // directories known to exist, relative to root
	// stableRewrites counts objects written again because the server
	// restarted before their COMMIT.
	stableRewrites atomic.Int64
}

var (
	_ chunkstore.Store        = (*Store)(nil)
	_ chunkstore.BufferGetter = (*Store)(nil)
)

// Open mounts the export holding o.Path and creates the store's directory
// if needed. The export is the longest prefix of o.Path the server
// mounts; the rest is a directory inside it.
func Open(ctx context.Context, o Options) (*Store, error) {
	s := &Store{o: o, loc: "nfs://" + o.Host + o.Path}
	if strings.Contains(o.Host, ":") {
		s.loc = "nfs://[" + o.Host + "]" + o.Path
	}
	if o.Port != 0 {
		s.loc = "nfs://" + net.JoinHostPort(o.Host, fmt.Sprint(o.Port)) + o.Path
	}
	err := s.do(ctx, "mount", func() error { return s.mount() })
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) dialOpts() rpc.DialOptions {
	d := rpc.DialOptions{Timeout: s.o.Timeout, Retries: s.o.Retrans, Privileged: s.o.ResvPort && os.Geteuid() == 0}
	if s.o.LocalAddr.IsValid() {
		d.LocalIP = s.o.LocalAddr.AsSlice()
	}
	return d
}

// dial connects to an RPC program at port, or where the portmapper says.
func (s *Store) dial(port int, prog uint32, vers uint32) (*rpc.Client, error) {
	if port == 0 {
		pm, err := rpc.DialTCPWith("tcp", net.JoinHostPort(s.o.Host, "111"), s.dialOpts())
		if err != nil {
			return nil, fmt.Errorf("portmapper: %w", err)
		}
		p := &rpc.Portmapper{Client: pm}
		port, err = p.Getport(rpc.Mapping{Prog: prog, Vers: vers, Prot: rpc.IPProtoTCP})
		pm.Close()
		if err != nil {
			return nil, fmt.Errorf("portmapper: %w", err)
		}
		if port == 0 {
			return nil, fmt.Errorf("portmapper: program %d version %d is not registered", prog, vers)
		}
	}
	return gonfs.DialServiceAtPortWith(s.o.Host, port, s.dialOpts())
}

func (s *Store) mount() error {
	mc, err := s.dial(s.o.MountPort, gonfs.MountProg, gonfs.MountVers)
	if err != nil {
		return fmt.Errorf("connect to mountd: %w", err)
	}
	s.mnt = &gonfs.Mount{Client: mc}
	host, _ := os.Hostname()
	auth := rpc.NewAuthUnix(host, uint32(os.Geteuid()), uint32(os.Getegid())).Auth()
	// Try the whole path, then shorter prefixes: the server exports some
	// prefix; the rest is made inside it.
	export, rest := s.o.Path, ""
	var fh []byte
	for {
		fh, err = s.mnt.MountHandle(export, auth)
		if err == nil {
			break
		}
		if !errors.Is(err, gonfs.ErrMountRefused) {
			// No answer: a shorter prefix would wait as long again.
			return fmt.Errorf("mount %s: the server does not answer (%d sends, %s each): %w", s.o.Path, s.o.Retrans, s.o.Timeout, err)
		}
		if export == "/" {
			return fmt.Errorf("mount %s: no prefix of it is exported to us: %w", s.o.Path, err)
		}
		rest = path.Join(path.Base(export), rest)
		export = path.Dir(export)
	}
	for i := 0; i < max(1, s.o.Conns); i++ {
		c, err := s.dial(s.o.Port, gonfs.Nfs3Prog, gonfs.Nfs3Vers)
		if err != nil {
			return fmt.Errorf("connect to nfsd: %w", err)
		}
		t, err := gonfs.NewTargetWithClient(c, auth, fh, export, 0)
		if err != nil {
			c.Close()
			return fmt.Errorf("export %s: %w", export, err)
		}
		s.conns = append(s.conns, t)
	}
	// The server's limits cap rsize and wsize, as the kernel does.
	if fi, err := s.conns[0].FSInfo(); err == nil {
		if fi.WTMax > 0 && uint32(s.o.WSize) > fi.WTMax {
			s.o.WSize = int(fi.WTMax)
		}
		if fi.RTMax > 0 && uint32(s.o.RSize) > fi.RTMax {
			s.o.RSize = int(fi.RTMax)
		}
	}
	s.root = rest
	if rest != "" {
		if err := s.mkdirAll(s.conns[0], rest); err != nil {
			return fmt.Errorf("create %s in export %s: %w", rest, export, err)
		}
	}
	return nil
}

// Location names the server and path.
func (s *Store) Location() string { return s.loc }

// Options returns the options the store was opened with.
func (s *Store) Options() Options { return s.o }

func (s *Store) target() *gonfs.Target {
	return s.conns[int(s.next.Add(1))%len(s.conns)]
}

func (s *Store) full(name string) string {
	if s.root == "" {
		return name
	}
	return s.root + "/" + name
}

// do runs op, which the NFS client cannot cancel, and returns when it
// ends or ctx is done, classifying its error. An abandoned op ends by
// itself within timeo x retrans.
func (s *Store) do(ctx context.Context, what string, op func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- op() }()
	select {
	case err := <-done:
		return s.wrap(what, err)
	case <-ctx.Done():
		return fmt.Errorf("%s: %s: %w", s.loc, what, ctx.Err())
	}
}

func (s *Store) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, chunkstore.ErrNotFound) {
		return fmt.Errorf("%s: %s: %w", s.loc, what, chunkstore.ErrNotFound)
	}
	var ne *gonfs.Error
	var netErr net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &ne) && (ne.ErrorString == "NFS3ERR_JUKEBOX" || ne.ErrorString == "NFS3ERR_IO" || ne.ErrorString == "NFS3ERR_SERVERFAULT"):
		return chunkstore.Transient(fmt.Errorf("%s: %s: %w", s.loc, what, err))
	case errors.As(err, &netErr), strings.HasSuffix(msg, "disconnected"), strings.HasSuffix(msg, "client closed"), strings.Contains(msg, "connection refused"), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return chunkstore.Transient(fmt.Errorf("%s: %s: server unreachable: %w", s.loc, what, err))
	}
	return fmt.Errorf("%s: %s: %w", s.loc, what, err)
}

// mkdirAll creates dir (relative to the export) and its parents.
func (s *Store) mkdirAll(t *gonfs.Target, dir string) error {
	if _, ok := s.dirs.Load(dir); ok || dir == "" || dir == "." {
		return nil
	}
	if _, _, err := t.Lookup(dir); err == nil {
		s.dirs.Store(dir, true)
		return nil
	}
	if err := s.mkdirAll(t, path.Dir(dir)); err != nil {
		return err
	}
	if _, err := t.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	s.dirs.Store(dir, true)
	return nil
}

func randSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Put writes a temporary file with UNSTABLE writes of at most wsize
// bytes, all in flight at once, commits it (checking the write verifiers:
// a server that restarted in between gets the object again with stable
// writes), and renames it over name: readers never see a partial object,
// and once Put returns the object is durable (the data by the COMMIT,
// the name because NFSv3 servers commit a RENAME before answering it).
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, name, data, false)
}

// PutIfAbsent implements chunkstore.Creator: the object is written to a
// committed temporary file like Put's, then hard-linked to its name with
// NFSv3 LINK, which fails if the name is taken (a RENAME would replace
// it); the temporary goes either way.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	return s.put(ctx, name, data, true)
}

var _ chunkstore.Creator = (*Store)(nil)

func (s *Store) put(ctx context.Context, name string, data []byte, exclusive bool) error {
	if err := chunkstore.ValidName(name); err != nil {
		return err
	}
	final := s.full(name)
	tmp := path.Join(path.Dir(final), tmpPrefix+path.Base(final)+"-"+randSuffix())
	t := s.target()
	return s.do(ctx, "put "+name, func() error {
		if err := s.mkdirAll(t, path.Dir(final)); err != nil {
			return err
		}
		f, err := t.OpenFile(tmp, 0o600)
		if err != nil {
			return fmt.Errorf("create %s: %w", tmp, err)
		}
		err = s.writeAll(f, data, gonfs.WriteUnstable)
		if errors.Is(err, errServerRestarted) {
			// The server lost unstable data: write it again, stably.
			s.stableRewrites.Add(1)
			err = s.writeAll(f, data, gonfs.WriteFileSync)
		}
		if err != nil {
			_ = t.Remove(tmp)
			return fmt.Errorf("write %s: %w", tmp, err)
		}
		if exclusive {
			err := t.Link(tmp, final)
			_ = t.Remove(tmp)
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create %s: %w", final, chunkstore.ErrExists)
			}
			if err != nil {
				return fmt.Errorf("link %s: %w", final, err)
			}
			return nil
		}
		if err := t.Rename(tmp, final); err != nil {
			_ = t.Remove(tmp)
			return fmt.Errorf("rename %s: %w", tmp, err)
		}
		return nil
	})
}

// testHookBeforeCommit, if set, runs between an object's unstable writes
// and its COMMIT (tests restart the server there).
var testHookBeforeCommit func()

var errServerRestarted = errors.New("the server restarted while the object was written (write verifier changed)")

// writeAll writes data in wsize blocks, all in flight at once (one RPC
// connection pipelines them), then, for unstable writes, commits the file
// and checks that every write's verifier matches the commit's: a
// different one means the server restarted and may have lost data.
func (s *Store) writeAll(f *gonfs.File, data []byte, how uint32) error {
	type result struct {
		verf uint64
		err  error
	}
	n := (len(data) + s.o.WSize - 1) / s.o.WSize
	results := make(chan result, n)
	for off := 0; off < len(data); off += s.o.WSize {
		go func(off int) {
			v, err := f.WriteAtHow(data[off:min(len(data), off+s.o.WSize)], uint64(off), how)
			results <- result{v, err}
		}(off)
	}
	verfs := make([]uint64, 0, n)
	var first error
	for range n {
		r := <-results
		if r.err != nil && first == nil {
			first = r.err
		}
		verfs = append(verfs, r.verf)
	}
	if first != nil {
		return first
	}
	if how != gonfs.WriteUnstable {
		return nil
	}
	if testHookBeforeCommit != nil {
		testHookBeforeCommit()
	}
	cv, err := f.CommitVerf()
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	for _, v := range verfs {
		if v != cv {
			return errServerRestarted
		}
	}
	return nil
}

// Get reads an object whole, rsize bytes per call.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter.
func (s *Store) GetBuffer(ctx context.Context, name string, into []byte) ([]byte, error) {
	if err := chunkstore.ValidName(name); err != nil {
		return nil, err
	}
	var out []byte
	t := s.target()
	err := s.do(ctx, "get "+name, func() error {
		fi, fh, err := t.Lookup(s.full(name))
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return os.ErrNotExist
		}
		_ = fh
		f, err := t.Open(s.full(name))
		if err != nil {
			return err
		}
		size := fi.Size()
		buf := chunkstore.Grow(into, int(size))
		for off := int64(0); off < size; {
			n, err := f.ReadAt(buf[off:min(size, off+int64(s.o.RSize))], off)
			off += int64(n)
			if err == io.EOF && off < size {
				return fmt.Errorf("%d of %d bytes: %w", off, size, io.ErrUnexpectedEOF)
			}
			if err != nil && err != io.EOF {
				return err
			}
			if n == 0 && off < size {
				return io.ErrUnexpectedEOF
			}
		}
		out = buf
		return nil
	})
	return out, err
}

// Stat looks the object up.
func (s *Store) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	if err := chunkstore.ValidName(name); err != nil {
		return chunkstore.Info{}, err
	}
	var info chunkstore.Info
	t := s.target()
	err := s.do(ctx, "stat "+name, func() error {
		fi, _, err := t.Lookup(s.full(name))
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return os.ErrNotExist
		}
		info = chunkstore.Info{Name: name, Size: fi.Size()}
		return nil
	})
	return info, err
}

// walk calls visit for every entry under the directory rel (relative to
// the store's root) whose path could hold names with prefix, temporary
// files included, descending into directories.
func (s *Store) walk(ctx context.Context, rel, prefix string, visit func(name string, e *gonfs.EntryPlus) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := s.target()
	var entries []*gonfs.EntryPlus
	err := s.do(ctx, "list "+prefix, func() error {
		p := s.full(rel)
		if p == "" {
			p = "."
		}
		var err error
		entries, err = t.ReadDirPlus(p)
		return err
	})
	if errors.Is(err, chunkstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if n == "." || n == ".." {
			continue
		}
		name := n
		if rel != "" {
			name = rel + "/" + n
		}
		if e.IsDir() {
			if strings.HasPrefix(name+"/", prefix) || strings.HasPrefix(prefix, name+"/") {
				if err := s.walk(ctx, name, prefix, visit); err != nil {
					return err
				}
			}
			continue
		}
		if err := visit(name, e); err != nil {
			return err
		}
	}
	return nil
}

// List walks the directories under prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	dir := path.Dir(prefix + "x") // the directory holding names with this prefix
	if dir == "." {
		dir = ""
	}
	return s.walk(ctx, dir, prefix, func(name string, e *gonfs.EntryPlus) error {
		if strings.HasPrefix(path.Base(name), tmpPrefix) || !strings.HasPrefix(name, prefix) {
			return nil
		}
		return fn(chunkstore.Info{Name: name, Size: e.Size()})
	})
}

// RemoveStale implements chunkstore.StaleRemover: it deletes the temporary
// files of writers that died before their RENAME, once the server's mtime
// says they are older than age (a grace period far longer than any clock
// skew between this host and the server).
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) (int, error) {
	cutoff := time.Now().Add(-age)
	removed := 0
	t := s.target()
	err := s.walk(ctx, "", "", func(name string, e *gonfs.EntryPlus) error {
		if !strings.HasPrefix(path.Base(name), tmpPrefix) || !e.Attr.IsSet || e.Attr.Attr.ModTime().After(cutoff) {
			return nil
		}
		if err := s.do(ctx, "remove "+name, func() error { return t.Remove(s.full(name)) }); err == nil {
			removed++
		}
		return nil
	})
	return removed, err
}

var _ chunkstore.StaleRemover = (*Store)(nil)

// Delete removes an object.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := chunkstore.ValidName(name); err != nil {
		return err
	}
	t := s.target()
	return s.do(ctx, "delete "+name, func() error {
		if _, _, err := t.Lookup(s.full(name)); err != nil {
			return err
		}
		return t.Remove(s.full(name))
	})
}

// Sync has nothing left to do: Put commits each object before renaming
// it, and NFSv3 servers commit a RENAME before they answer it.
func (s *Store) Sync(ctx context.Context) error { return ctx.Err() }

// Close unmounts and closes the connections.
func (s *Store) Close() error {
	for _, t := range s.conns {
		t.Close()
	}
	s.conns = nil
	if s.mnt != nil {
		done := make(chan struct{})
		go func() { _ = s.mnt.Unmount(); s.mnt.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(s.o.Timeout):
		}
		s.mnt = nil
	}
	return nil
}
