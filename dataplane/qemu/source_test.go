package qemu_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/faulty"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/ratelimit"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qemu"
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
	var nodes []struct {
		NodeName     string `json:"node-name"`
		DirtyBitmaps []struct {
			Name string `json:"name"`
		} `json:"dirty-bitmaps"`
	}
	if err := f.d.Execute("query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
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
	f.d.Execute("query-block-jobs", nil, &jobs)
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
	got, want := slices.Sorted(slices.Values(s.Bitmaps)), slices.Sorted(slices.Values(bitmaps))
	if !slices.Equal(got, want) {
		t.Errorf("bitmaps %v, want %v", got, want)
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
	if err := f.d.Execute("block-dirty-bitmap-remove", map[string]any{"node": "disk0", "name": after.Bitmap}, nil); err != nil {
		t.Fatal(err)
	}
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

	// A disabled bitmap did not record every write: full.
	if err := f.d.Execute("block-dirty-bitmap-disable", map[string]any{"node": "disk0", "name": again.Bitmap}, nil); err != nil {
		t.Fatal(err)
	}
	f.write(t, "write -P 0x23 31M 64k")
	dis := f.backup(t, again)
	if dis.Manifest.Mode != chunkstore.ModeFull || !strings.Contains(dis.FullReason, "disabled") {
		t.Fatalf("after the bitmap was disabled: mode %s, reason %q", dis.Manifest.Mode, dis.FullReason)
	}

	// A crash leaves the persistent bitmap inconsistent: full. (QEMU
	// writes a new persistent bitmap into the image at a clean close, and
	// marks it in use while open: restart once, then crash.)
	f.d.Restart()
	f.write(t, "write -P 0x25 33M 64k")
	f.d.Crash()
	f.write(t, "write -P 0x24 32M 64k")
	want = f.disk(t)
	crashed := f.backup(t, dis)
	if crashed.Manifest.Mode != chunkstore.ModeFull || !strings.Contains(crashed.FullReason, "inconsistent") {
		t.Fatalf("after a crash: mode %s, reason %q", crashed.Manifest.Mode, crashed.FullReason)
	}
	if !bytes.Equal(restoreBytes(t, f.repo, crashed.Manifest), want) {
		t.Fatal("full backup after the crash differs")
	}
}

// TestBackupCancelledOrFailed: a backup cancelled while QEMU's job runs,
// and one whose repository fails after the job, leave no job, no node and
// no new bitmap; the previous bitmap still holds every change, so the
// next backup is incremental and complete.
func TestBackupCancelledOrFailed(t *testing.T) {
	f := newFixture(t, "256M")
	f.write(t, "write -P 0x5a 0 8M")
	full := f.backup(t, nil)
	// Lots of changes, so the job runs long enough to be cancelled.
	f.write(t, "write -P 0x61 16M 200M")

	ctx, cancel := context.WithCancel(context.Background())
	opts := qemu.BackupOptions{Chain: "c1", StagingDir: f.dir, PrevBitmap: full.Bitmap}
	opts.Parent = full.Manifest
	prog := &dataplane.Progress{}
	opts.Progress = prog
	go func() {
		for prog.Done() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := qemu.Backup(ctx, f.repo, f.src, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	f.state(t).clean(t, full.Bitmap)

	// A repository whose writes start failing midway: QEMU's job
	// succeeds, the backup does not; a full one (streamed) and an
	// incremental one (cut after the job) alike. (A chain of its own, so
	// its parents are in that repository.)
	st, _ := local.Open(filepath.Join(f.dir, "bad-repo"))
	bad := faulty.New(st)
	badRepo, err := chunkstore.Init(context.Background(), bad, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer badRepo.Close()
	o := qemu.BackupOptions{Chain: "cbad", StagingDir: f.dir}
	bad.FailPutAfter = 3
	if _, err := qemu.Backup(context.Background(), badRepo, f.src, o); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("full backup into a failing repository: %v", err)
	}
	f.state(t).clean(t, full.Bitmap)
	bad.FailPutAfter = 0
	base, err := qemu.Backup(context.Background(), badRepo, f.src, o)
	if err != nil {
		t.Fatal(err)
	}
	f.write(t, "write -P 0x62 40M 1M", "write -P 0x63 42M 1M", "write -P 0x64 44M 1M", "write -P 0x65 46M 1M", "write -P 0x66 48M 1M", "write -P 0x67 50M 1M")
	o.Parent, o.PrevBitmap = base.Manifest, base.Bitmap
	bad.FailPutAfter = bad.Puts() + 3
	if _, err := qemu.Backup(context.Background(), badRepo, f.src, o); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("incremental backup into a failing repository: %v", err)
	}
	f.state(t).clean(t, full.Bitmap, base.Bitmap)

	want := f.disk(t)
	next := f.backup(t, full)
	if next.Manifest.Mode != chunkstore.ModeIncremental || !bytes.Equal(restoreBytes(t, f.repo, next.Manifest), want) {
		t.Fatalf("after the cancel: mode %s (%s), or content differs", next.Manifest.Mode, next.FullReason)
	}
}

// TestBackupWhileWriting: a writer writes numbered 4 KiB blocks through
// the daemon's own NBD export, pass after pass, each pass in a scrambled
// order, while two backups run. A backup of one instant holds exactly the
// writes up to some sequence number S: every block has its latest write
// numbered at most S. A backup read over time instead would hold a block's
// new write beside another block's old data written before it.
func TestBackupWhileWriting(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import nbd").Run(); err != nil {
		t.Skip("python3-libnbd is not installed")
	}
	f := newFixture(t, "64M")
	const blocks, step = 16384, 7919 // 64 MiB of 4 KiB blocks; step is prime, so k*step covers them all
	script := fmt.Sprintf(`
import nbd, struct, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
seq = 1
while True:
    for k in range(%d):
        i = (k * %d) %% %d
        h.pwrite(struct.pack('<QQ', seq, i) * 256, i * 4096)
        seq += 1
`, blocks, step, blocks)
	w := exec.Command("/usr/bin/python3", "-c", script, f.own)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { w.Process.Kill(); w.Wait() }()
	// pos[i] is block i's place in a pass.
	pos := make([]uint64, blocks)
	for k := 0; k < blocks; k++ {
		pos[(k*step)%blocks] = uint64(k)
	}
	time.Sleep(500 * time.Millisecond)
	var prev *qemu.Result
	for round := 0; round < 2; round++ {
		res := f.backup(t, prev)
		img := restoreBytes(t, f.repo, res.Manifest)
		var top uint64
		for i := 0; i < blocks; i++ {
			top = max(top, binary.LittleEndian.Uint64(img[i*4096:]))
		}
		if top == 0 {
			t.Fatalf("round %d: the writer wrote nothing", round)
		}
		pass := (top - 1) / blocks
		for i := 0; i < blocks; i++ {
			seq := binary.LittleEndian.Uint64(img[i*4096:])
			if idx := binary.LittleEndian.Uint64(img[i*4096+8:]); seq != 0 && idx != uint64(i) {
				t.Fatalf("round %d: block %d holds block %d's data", round, i, idx)
			}
			want := pass*blocks + pos[i] + 1
			if want > top {
				want -= blocks // this pass had not reached it: the previous one's
			}
			if int64(want) <= 0 || want > top {
				want = 0
			}
			if seq != want {
				t.Fatalf("round %d (%s): block %d holds write %d, the instant of write %d says %d", round, res.Manifest.Mode, i, seq, top, want)
			}
		}
		t.Logf("round %d: %s backup at write %d, QEMU sent %d bytes", round, res.Manifest.Mode, top, res.BytesFromQEMU)
		prev = res
	}
}

// TestGroupBackupOneInstant: two disks of one qemu-storage-daemon, a
// writer alternating numbered writes between them; a group backup holds,
// on both disks together, exactly the writes up to one sequence number.
func TestGroupBackupOneInstant(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import nbd").Run(); err != nil {
		t.Skip("python3-libnbd is not installed")
	}
	qmptest.Require(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "own.sock")
	args := []string{"--nbd-server", "addr.type=unix,addr.path=" + sock}
	for _, n := range []string{"a", "b"} {
		img := filepath.Join(dir, n+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "32M")
		args = append(args, "--blockdev", "driver=file,filename="+img+",node-name=file-"+n,
			"--blockdev", "driver=qcow2,file=file-"+n+",node-name=disk-"+n,
			"--export", "type=nbd,id=own-"+n+",node-name=disk-"+n+",name=own-"+n+",writable=on")
	}
	d := qmptest.Start(t, args...)
	st, _ := local.Open(filepath.Join(dir, "repo"))
	repo, err := chunkstore.Init(context.Background(), st, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	const blocks, step = 8192, 7919
	script := fmt.Sprintf(`
import nbd, struct, sys
hs = []
for name in ("own-a", "own-b"):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%%s?socket=%%s" %% (name, sys.argv[1]))
    hs.append(h)
seq = 1
while True:
    k = (seq - 1) // 2
    i = (k * %d) %% %d
    hs[(seq - 1) %% 2].pwrite(struct.pack('<QQ', seq, i) * 256, i * 4096)
    seq += 1
`, step, blocks)
	w := exec.Command("/usr/bin/python3", "-c", script, sock)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { w.Process.Kill(); w.Wait() }()
	time.Sleep(500 * time.Millisecond)
	var prev []*qemu.Result
	for round := 0; round < 2; round++ {
		members := make([]qemu.Member, 2)
		for i, n := range []string{"a", "b"} {
			o := qemu.BackupOptions{Chain: "vm", StagingDir: dir}
			o.VolumeID = "disk-" + n
			if prev != nil {
				o.Parent, o.PrevBitmap = prev[i].Manifest, prev[i].Bitmap
			}
			members[i] = qemu.Member{Source: qemu.Source{QMP: d.QMP, Node: "disk-" + n}, Options: o}
		}
		rs, err := qemu.BackupGroup(context.Background(), repo, members)
		if err != nil {
			t.Fatalf("group backup: %v\n%s", err, d.Log())
		}
		imgs := [][]byte{restoreBytes(t, repo, rs[0].Manifest), restoreBytes(t, repo, rs[1].Manifest)}
		var top uint64
		for _, img := range imgs {
			for i := 0; i < blocks; i++ {
				top = max(top, binary.LittleEndian.Uint64(img[i*4096:]))
			}
		}
		// Write seq goes to disk (seq-1)%2, block ((seq-1)/2*step)%blocks:
		// replay the schedule up to top and compare.
		want := [2][]uint64{make([]uint64, blocks), make([]uint64, blocks)}
		for seq := uint64(1); seq <= top; seq++ {
			k := (seq - 1) / 2
			want[(seq-1)%2][(k*step)%blocks] = seq
		}
		for dk, img := range imgs {
			for i := 0; i < blocks; i++ {
				if got := binary.LittleEndian.Uint64(img[i*4096:]); got != want[dk][i] {
					t.Fatalf("round %d: disk %d block %d holds write %d; the instant of write %d says %d", round, dk, i, got, top, want[dk][i])
				}
			}
		}
		t.Logf("round %d: %s + %s at write %d", round, rs[0].Manifest.Mode, rs[1].Manifest.Mode, top)
		prev = rs
	}
}

// TestRevert: a disk changed after its backup is reverted through an NBD
// export QEMU serves of the node: only the chunks that differ are written,
// the disk holds the backup again, QEMU is left with no export and no
// NBD server of volback's, and the next backup is full.
func TestRevert(t *testing.T) {
	qmptest.Require(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 3M", img)
	d := qmptest.Start(t, "--blockdev", "driver=file,filename="+img+",node-name=file0",
		"--blockdev", "driver=qcow2,file=file0,node-name=disk0")
	st, _ := local.Open(filepath.Join(dir, "repo"))
	repo, err := chunkstore.Init(context.Background(), st, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	src := qemu.Source{QMP: d.QMP, Node: "disk0"}
	o := qemu.BackupOptions{Chain: "c", StagingDir: dir}
	res, err := qemu.Backup(context.Background(), repo, src, o)
	if err != nil {
		t.Fatal(err)
	}
	want := restoreBytes(t, repo, res.Manifest)
	// Change two chunks through a writable export of QEMU's own. (A QMP
	// socket takes one client at a time: each command on its own.)
	sock := filepath.Join(dir, "w.sock")
	ex := func(cmd string, args map[string]any) {
		t.Helper()
		if err := d.Execute(cmd, args, nil); err != nil {
			t.Fatal(err)
		}
	}
	ex("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	ex("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "disk0", "name": "w", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 512k 64k", "-c", "write -P 0x66 9M 1M", "nbd+unix:///w?socket="+sock)
	ex("block-export-del", map[string]any{"id": "w", "mode": "hard"}) // qemu-io is gone; QEMU may not know it yet
	ex("nbd-server-stop", nil)

	rst, err := qemu.Revert(context.Background(), repo, src, res.Manifest, qemu.RevertOptions{SocketDir: dir})
	if err != nil {
		t.Fatalf("revert: %v\n%s", err, d.Log())
	}
	if rst.ChunksWritten != 2 || rst.ChunksSame != 14 {
		t.Errorf("revert: %+v, want 2 chunks written, 14 the same", rst)
	}
	// What the disk holds now, read back by a full backup (which must be
	// full: the chain restarted).
	again, err := qemu.Backup(context.Background(), repo, src, qemu.BackupOptions{Chain: "c", StagingDir: dir, PrevBitmap: res.Bitmap, BackupOptions: dataplane.BackupOptions{Parent: res.Manifest}})
	if err != nil {
		t.Fatal(err)
	}
	if again.Manifest.Mode != chunkstore.ModeFull || !bytes.Equal(restoreBytes(t, repo, again.Manifest), want) {
		t.Fatalf("after the revert: mode %s (%s), or the disk does not hold the backup", again.Manifest.Mode, again.FullReason)
	}
	var exports []any
	d.Execute("query-block-exports", nil, &exports)
	if len(exports) != 0 {
		t.Errorf("exports left: %v", exports)
	}
	// A second server of volback's can start: the revert stopped its own.
	ex("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
}

// TestConcurrentBackupsShareQMP: backups of two disks of one process run
// at once (a QMP socket serves one client at a time: they share one
// connection) and both succeed.
func TestConcurrentBackupsShareQMP(t *testing.T) {
	qmptest.Require(t)
	dir := t.TempDir()
	var args []string
	for _, n := range []string{"a", "b"} {
		img := filepath.Join(dir, n+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "32M")
		run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x3"+n[:0]+"1 0 20M", img)
		args = append(args, "--blockdev", "driver=file,filename="+img+",node-name=file-"+n, "--blockdev", "driver=qcow2,file=file-"+n+",node-name=disk-"+n)
	}
	d := qmptest.Start(t, args...)
	st, _ := local.Open(filepath.Join(dir, "repo"))
	repo, err := chunkstore.Init(context.Background(), st, chunkstore.InitOptions{ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	errs := make(chan error, 2)
	for _, n := range []string{"a", "b"} {
		go func(n string) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := qemu.Backup(ctx, repo, qemu.Source{QMP: d.QMP, Node: "disk-" + n}, qemu.BackupOptions{Chain: "c-" + n, StagingDir: dir})
			errs <- err
		}(n)
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackupReadBandwidth: volumeReadBandwidth becomes the speed of QEMU's
// job, which is what reads the disk.
func TestBackupReadBandwidth(t *testing.T) {
	f := newFixture(t, "32M")
	f.write(t, "write -P 0x5a 0 16M")
	opts := qemu.BackupOptions{Chain: "bw", StagingDir: f.dir}
	opts.ReadBytesPerSec = 8 << 20
	start := time.Now()
	res, err := qemu.Backup(context.Background(), f.repo, f.src, opts)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < 1500*time.Millisecond {
		t.Errorf("16 MiB of data at 8 MiB/s took %s", took)
	}
	t.Logf("16 MiB of data, 32 MiB disk, at 8 MiB/s: %s, QEMU sent %d bytes", took.Round(time.Millisecond), res.BytesFromQEMU)
}

// TestStreamedStagingIsBounded: when the repository is slower than QEMU,
// a full backup pauses QEMU's job instead of staging the whole disk: what
// waits to be cut stays near the flow-control bound.
func TestStreamedStagingIsBounded(t *testing.T) {
	qmptest.Require(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	f, _ := os.Create(img)
	r := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, 1<<20)
	for i := 0; i < 192; i++ {
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		f.Write(buf)
	}
	f.Close()
	d := qmptest.Start(t, "--blockdev", "driver=file,filename="+img+",node-name=file0", "--blockdev", "driver=raw,file=file0,node-name=disk0")
	st, _ := local.Open(filepath.Join(dir, "repo"))
	repo, err := chunkstore.Init(context.Background(), ratelimit.New(st, 48<<20, 0), chunkstore.InitOptions{ChunkSize: 1 << 20, Compression: chunkstore.CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	res, err := qemu.Backup(context.Background(), repo, qemu.Source{QMP: d.QMP, Node: "disk0"}, qemu.BackupOptions{Chain: "c", StagingDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("192 MiB disk into a 48 MiB/s repository: at most %d MiB staged", res.PeakStaged>>20)
	if res.PeakStaged > 64<<20 {
		t.Fatalf("%d MiB staged at once: flow control did not hold QEMU back", res.PeakStaged>>20)
	}
	want, _ := os.ReadFile(img)
	if !bytes.Equal(restoreBytes(t, repo, res.Manifest), want) {
		t.Fatal("the backup differs from the disk")
	}
}

// TestTwoChainsAtOnce: two backups of one disk to two chains (two
// storages) run at the same time, each with its own bitmap and job.
func TestTwoChainsAtOnce(t *testing.T) {
	f := newFixture(t, "64M")
	f.write(t, "write -P 0x5a 0 30M")
	want := f.disk(t)
	errs := make(chan error, 2)
	res := make([]*qemu.Result, 2)
	for i, chain := range []string{"s1", "s2"} {
		go func(i int, chain string) {
			var err error
			res[i], err = qemu.Backup(context.Background(), f.repo, f.src, qemu.BackupOptions{Chain: chain, StagingDir: f.dir})
			errs <- err
		}(i, chain)
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range res {
		if !bytes.Equal(restoreBytes(t, f.repo, r.Manifest), want) {
			t.Fatal("a backup of one of the two chains differs")
		}
	}
	f.state(t).clean(t, res[0].Bitmap, res[1].Bitmap)
}
