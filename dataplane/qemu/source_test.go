package qemu_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qemu"
	"github.com/volback/volback/dataplane/qmp"
	"github.com/volback/volback/dataplane/qmp/qmptest"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// restoreBytes reads a backup back whole.
func restoreBytes(t *testing.T, repo *chunkstore.Repository, m *chunkstore.Manifest) []byte {
	t.Helper()
	im := dataplane.OpenImage(repo, m, dataplane.ImageOptions{})
	defer im.Close()
	b := make([]byte, m.Size)
	if err := im.ReadAt(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

type fixture struct {
	d    *qmptest.Daemon
	img  string
	own  string // the daemon's own NBD export, which it keeps serving
	repo *chunkstore.Repository
	dir  string
	src  qemu.Source
}

func newFixture(t *testing.T, size string) *fixture {
	qmptest.Require(t)
	dir := t.TempDir()
	f := &fixture{dir: dir, img: filepath.Join(dir, "disk.qcow2")}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", f.img, size)
	ownSock := filepath.Join(dir, "own.sock")
	f.d = qmptest.Start(t, "--blockdev", "driver=file,filename="+f.img+",node-name=file0",
		"--blockdev", "driver=qcow2,file=file0,node-name=disk0",
		"--nbd-server", "addr.type=unix,addr.path="+ownSock,
		"--export", "type=nbd,id=own,node-name=disk0,name=own,writable=on")
	f.own = "nbd+unix:///own?socket=" + ownSock
	st, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	if f.repo, err = chunkstore.Init(context.Background(), st, chunkstore.InitOptions{ChunkSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.repo.Close() })
	f.src = qemu.Source{QMP: f.d.QMP, Node: "disk0", Name: "test daemon"}
	return f
}

// write changes the disk through the daemon's own NBD export.
func (f *fixture) write(t *testing.T, cmds ...string) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, f.own)...)
}

// disk reads the disk as it is now.
func (f *fixture) disk(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(f.dir, "now.raw")
	os.Remove(p)
	run(t, "nbdcopy", f.own, p)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) backup(t *testing.T, parent *qemu.Result) *qemu.Result {
	t.Helper()
	opts := qemu.BackupOptions{Chain: "c1", StagingDir: f.dir}
	opts.VolumeID = "disk0"
	if parent != nil {
		opts.Parent, opts.PrevBitmap = parent.Manifest, parent.Bitmap
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := qemu.Backup(ctx, f.repo, f.src, opts)
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, f.d.Log())
	}
	return res
}

type qemuState struct {
	Bitmaps []string
	Nodes   []string
	Jobs    int
}

func (f *fixture) state(t *testing.T) qemuState {
	t.Helper()
	ctx := context.Background()
	c, err := qmp.Dial(ctx, f.d.QMP, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var nodes []struct {
		NodeName     string `json:"node-name"`
		DirtyBitmaps []struct {
			Name string `json:"name"`
		} `json:"dirty-bitmaps"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	var s qemuState
	for _, n := range nodes {
		s.Nodes = append(s.Nodes, n.NodeName)
		if n.NodeName == "disk0" {
			for _, b := range n.DirtyBitmaps {
				s.Bitmaps = append(s.Bitmaps, b.Name)
			}
		}
	}
	var jobs []any
	c.Execute(ctx, "query-block-jobs", nil, &jobs)
	s.Jobs = len(jobs)
	return s
}

func (s qemuState) clean(t *testing.T, bitmaps ...string) {
	t.Helper()
	for _, n := range s.Nodes {
		if strings.HasPrefix(n, "volback") {
			t.Errorf("node %s left in QEMU", n)
		}
	}
	if s.Jobs != 0 {
		t.Errorf("%d jobs left in QEMU", s.Jobs)
	}
	if strings.Join(s.Bitmaps, ",") != strings.Join(bitmaps, ",") {
		t.Errorf("bitmaps %v, want %v", s.Bitmaps, bitmaps)
	}
}

// TestBackupFromStorageDaemon: full, then incremental backups of a qcow2
// disk of a qemu-storage-daemon that serves its own NBD export all along;
// each restores to the disk as it was; the incremental receives only the
// changed clusters; the bitmap survives a restart; a bitmap removed behind
// volback's back makes the next backup full, with the reason.
func TestBackupFromStorageDaemon(t *testing.T) {
	f := newFixture(t, "64M")
	f.write(t, "write -P 0x5a 0 8M", "write -P 0x33 40M 3M")
	want := f.disk(t)
	full := f.backup(t, nil)
	if full.Manifest.Mode != chunkstore.ModeFull || !bytes.Equal(restoreBytes(t, f.repo, full.Manifest), want) {
		t.Fatalf("full backup: mode %s, or its content differs", full.Manifest.Mode)
	}
	f.state(t).clean(t, full.Bitmap)

	f.write(t, "write -P 0x77 20M 640k")
	want = f.disk(t)
	inc := f.backup(t, full)
	if inc.Manifest.Mode != chunkstore.ModeIncremental || inc.FullReason != "" {
		t.Fatalf("second backup: mode %s (%s)", inc.Manifest.Mode, inc.FullReason)
	}
	if !bytes.Equal(restoreBytes(t, f.repo, inc.Manifest), want) {
		t.Fatal("incremental backup's content differs from the disk")
	}
	if inc.BytesFromQEMU < 640<<10 || inc.BytesFromQEMU > 1<<20 {
		t.Errorf("QEMU sent %d bytes for 640 KiB changed", inc.BytesFromQEMU)
	}
	t.Logf("incremental: QEMU sent %d bytes; %d chunks read", inc.BytesFromQEMU, inc.Manifest.Stats.ChunksRead)
	f.state(t).clean(t, inc.Bitmap)

	// A clean restart keeps the persistent bitmap: still incremental.
	f.d.Restart()
	f.write(t, "write -P 0x11 1M 64k")
	want = f.disk(t)
	after := f.backup(t, inc)
	if after.Manifest.Mode != chunkstore.ModeIncremental || !bytes.Equal(restoreBytes(t, f.repo, after.Manifest), want) {
		t.Fatalf("after a restart: mode %s (%s)", after.Manifest.Mode, after.FullReason)
	}

	// The bitmap removed behind volback's back: full, saying why.
	c, err := qmp.Dial(context.Background(), f.d.QMP, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(context.Background(), "block-dirty-bitmap-remove", map[string]any{"node": "disk0", "name": after.Bitmap}, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	f.write(t, "write -P 0x22 30M 64k")
	want = f.disk(t)
	again := f.backup(t, after)
	if again.Manifest.Mode != chunkstore.ModeFull || !strings.Contains(again.FullReason, "gone") {
		t.Fatalf("after the bitmap was removed: mode %s, reason %q", again.Manifest.Mode, again.FullReason)
	}
	if !bytes.Equal(restoreBytes(t, f.repo, again.Manifest), want) {
		t.Fatal("full backup after the bitmap was removed differs")
	}
	f.state(t).clean(t, again.Bitmap)
}
