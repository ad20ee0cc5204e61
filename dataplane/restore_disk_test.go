package dataplane_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
)

// lyingDisk is a file system (a FUSE loopback) whose files store a
// flipped byte at one offset while the writer is told all went well: the
// page cache holds what was written, the disk something else, as a bad
// cable or firmware would leave it.
type lyingDisk struct {
	*fs.LoopbackNode
	at    int64
	fired *atomic.Int32
}

// WrapChild makes every node of the tree a lying one.
func (n *lyingDisk) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &lyingDisk{LoopbackNode: ops.(*fs.LoopbackNode), at: n.at, fired: n.fired}
}

func (n *lyingDisk) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	inode, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		fh = &lyingFile{LoopbackFile: lf, at: n.at, fired: n.fired}
	}
	return inode, fh, fl, errno
}

func (n *lyingDisk) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		fh = &lyingFile{LoopbackFile: lf, at: n.at, fired: n.fired}
	}
	return fh, fl, errno
}

type lyingFile struct {
	*fs.LoopbackFile
	at    int64
	fired *atomic.Int32
}

// PassthroughFd: no kernel passthrough, every write comes to Write.
func (f *lyingFile) PassthroughFd() (int, bool) { return 0, false }

func (f *lyingFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.at >= off && f.at < off+int64(len(data)) {
		data = bytes.Clone(data)
		data[f.at-off] ^= 0xff
		f.fired.Add(1)
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

func mountLyingDisk(t *testing.T, at int64) (string, *atomic.Int32) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("FUSE needs /dev/fuse and root, which CI has")
		}
		t.Skip("FUSE needs /dev/fuse and root")
	}
	backing, mnt := t.TempDir(), t.TempDir()
	var fired atomic.Int32
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		t.Fatal(err)
	}
	rootNode := &lyingDisk{LoopbackNode: root.(*fs.LoopbackNode), at: at, fired: &fired}
	rootNode.RootData.RootNode = rootNode
	srv, err := fs.Mount(mnt, rootNode, &fs.Options{MountOptions: fuse.MountOptions{FsName: "lying-disk", MaxWrite: 1 << 20,
		// The kernel keeps what it cached whatever the attributes say, as
		// a local disk's page cache would.
		ExplicitDataCacheControl: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Unmount() })
	return mnt, &fired
}

// TestRestoreChecksTheDisk: a restore's verification reads what the disk
// holds, not what the page cache kept of the writes: onto a disk that
// stores one flipped byte and reports success, the default restore fails
// naming the chunk and leaves no file; only --no-verify "succeeds".
func TestRestoreChecksTheDisk(t *testing.T) {
	ctx := context.Background()
	repo, m, _ := backedUp(t, 21)
	bad := int64(5*testChunk + 100)
	mnt, fired := mountLyingDisk(t, bad)
	target := filepath.Join(mnt, "restored.raw")
	_, err := dataplane.Restore(ctx, repo, m, target, dataplane.RestoreOptions{})
	if fired.Load() == 0 {
		t.Fatal("the lying disk never saw the write it corrupts")
	}
	if err == nil || !strings.Contains(err.Error(), "verify: chunk at offset 327680") {
		t.Fatalf("restore onto a disk that corrupts chunk 5: %v, want the verification to name offset 327680", err)
	}
	if _, serr := os.Stat(target); !os.IsNotExist(serr) {
		t.Fatalf("a restore that failed its verification left %s: %v", target, serr)
	}
	st, err := dataplane.Restore(ctx, repo, m, target, dataplane.RestoreOptions{SkipVerify: true})
	if err != nil || st.Verified {
		t.Fatalf("unverified restore: %+v, %v", st, err)
	}
}

// TestRevertChecksTheDisk: a revert reads every chunk it rewrote back from
// the disk: onto a disk that stores one flipped byte, it fails naming the
// chunk; unverified (a forced revert beside attached clients) it cannot
// tell.
func TestRevertChecksTheDisk(t *testing.T) {
	ctx := context.Background()
	repo, m, data := backedUp(t, 22)
	v, fired := lyingVolume(t, len(data), int64(5*testChunk+100))
	before := fired.Load()
	_, err := v.Revert(ctx, repo, m, dataplane.RevertOptions{Verify: true})
	if fired.Load() == before {
		t.Fatal("the revert never wrote the chunk the disk corrupts")
	}
	if err == nil || !strings.Contains(err.Error(), "verify: chunk at offset 327680") {
		t.Fatalf("revert onto a disk that corrupts chunk 5: %v, want the verification to name offset 327680", err)
	}
	if _, err := v.Revert(ctx, repo, m, dataplane.RevertOptions{}); err != nil {
		t.Fatalf("unverified revert: %v", err)
	}
}

// TestLiveRestoreChecksTheDisk: a live restore reads every chunk it copies
// back from the disk before a client sees it: onto a disk that stores one
// flipped byte, a client's read of that chunk fails (never returning the
// wrong data) and the background copy ends with an error naming it, not
// retrying forever; the other chunks read as the backup.
func TestLiveRestoreChecksTheDisk(t *testing.T) {
	ctx := context.Background()
	repo, m, data := backedUp(t, 23)
	v, fired := lyingVolume(t, len(data), int64(5*testChunk+100))
	if err := v.StartRestore(repo, m, v.Path()+".restore", "test"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, testChunk)
	if err := v.ReadAt(ctx, got, 4*testChunk); err != nil || !bytes.Equal(got, data[4*testChunk:5*testChunk]) {
		t.Fatalf("read of chunk 4 during the restore: %v (equal %v)", err, bytes.Equal(got, data[4*testChunk:5*testChunk]))
	}
	before := fired.Load()
	err := v.ReadAt(ctx, got, 5*testChunk)
	if fired.Load() == before {
		t.Fatal("the restore never wrote the chunk the disk corrupts")
	}
	if err == nil || !strings.Contains(err.Error(), "verify: chunk at offset 327680") {
		t.Fatalf("client read of the chunk the disk corrupts: %v, want the verification to name offset 327680", err)
	}
	done := make(chan error, 1)
	go func() { done <- v.RunRestore(ctx, dataplane.RestoreRunOptions{Parallelism: 2}) }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the background copy retried a chunk the disk does not keep for 30 s")
	}
	if err == nil || !strings.Contains(err.Error(), "verify: chunk at offset 327680") {
		t.Fatalf("background copy onto a disk that corrupts chunk 5: %v, want it to name offset 327680", err)
	}
	if _, ok := v.Restoring(); !ok {
		t.Fatal("a restore that failed its verification reports itself complete")
	}
}

// backedUp backs a seeded image of 24 test chunks up into a fresh
// in-memory repository.
func backedUp(t *testing.T, seed uint64) (*chunkstore.Repository, *chunkstore.Manifest, []byte) {
	t.Helper()
	ctx := context.Background()
	repo, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: testChunk})
	if err != nil {
		t.Fatal(err)
	}
	data := image(seed, 24*testChunk)
	m, err := dataplane.Backup(ctx, repo, bytes.NewReader(data), int64(len(data)), dataplane.BackupOptions{VolumeID: "v"})
	if err != nil {
		t.Fatal(err)
	}
	return repo, m, data
}

// lyingVolume opens, live, a zeroed volume of n bytes on a lying disk that
// flips the byte at bad; it is closed when the test ends.
func lyingVolume(t *testing.T, n int, bad int64) (*dataplane.Volume, *atomic.Int32) {
	t.Helper()
	mnt, fired := mountLyingDisk(t, bad)
	path := filepath.Join(mnt, "vol.raw")
	if err := os.WriteFile(path, make([]byte, n), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := dataplane.OpenLiveVolume("v", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, fired
}
