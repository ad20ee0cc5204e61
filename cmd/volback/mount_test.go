package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountProc is `volback mount` running in its own process: a test must
// never read a FUSE mount served by its own process.
type mountProc struct {
	cmd  *exec.Cmd
	dir  string
	done chan error
	log  *strings.Builder
}

func startMount(t *testing.T, dir string, args ...string) *mountProc {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &mountProc{dir: dir, done: make(chan error, 1), log: &strings.Builder{}}
	m.cmd = exec.Command(volbackBin, append([]string{"mount"}, append(args, dir)...)...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
				_ = m.cmd.Process.Kill()
				_ = exec.Command("fusermount3", "-u", "-z", dir).Run()
			}
		}
	})
	return m
}

// waitMounted waits until the mount shows the tree.
func (m *mountProc) waitMounted(t *testing.T) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(m.dir, "by-name")); err == nil {
			return
		}
		select {
		case err := <-m.done:
			t.Fatalf("volback mount exited: %v\n%s", err, m.log)
		default:
		}
		if i > 1000 {
			t.Fatalf("mount never appeared\n%s", m.log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	abs, _ := filepath.Abs(dir)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == abs {
			return true
		}
	}
	return false
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// treeSums returns the checksum of every regular file under root.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out[rel] = sha(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMountBackup: an ext4 filesystem with known files is backed up; the
// backup, mounted by `volback mount` in another process, is a disk image
// that loop-mounts read-only with every file intact and passes e2fsck.
func TestMountBackup(t *testing.T) {
	requireRoot(t)
	requireTools(t, "mkfs.ext4", "e2fsck", "losetup", "fusermount3")
	dir := t.TempDir()
	// Known files: random sizes and content, some nested, one sparse-ish.
	src := filepath.Join(dir, "src")
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 60 {
		p := filepath.Join(src, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%03d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, rng.IntN(3<<20))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := treeSums(t, src)
	img := filepath.Join(dir, "vol.raw")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	tool(t, time.Minute, "mkfs.ext4", "-q", "-d", src, img)
	repo := filepath.Join(dir, "repo")
	mustRun(t, "repo", "init", "--repo", repo)
	id := strings.TrimSpace(mustRun(t, "--quiet", "backup", "--repo", repo, "--name", "with files", img).stdout)

	mnt := filepath.Join(dir, "mnt")
	t0 := time.Now()
	m := startMount(t, mnt, "--repo", repo)
	m.waitMounted(t)
	images, _ := filepath.Glob(filepath.Join(mnt, "*", id+".raw"))
	if len(images) != 1 {
		t.Fatalf("no image for backup %s: %v", id, images)
	}
	f, err := os.Open(images[0])
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1)
	if _, err := f.ReadAt(first, 1024); err != nil {
		t.Fatal(err)
	}
	firstByte := time.Since(t0)
	f.Close()
	// How soon is a figure of the mount benchmark, not a test's.
	t.Logf("first byte of a fresh mount after %v (process start included)", firstByte)
	if fi, err := os.Stat(images[0]); err != nil || fi.Size() != 256<<20 || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("image %v %v", fi, err)
	}
	if link, err := os.Readlink(filepath.Join(mnt, "by-name", "with files.raw")); err != nil || !strings.HasSuffix(link, id+".raw") {
		t.Errorf("by-name link: %q %v", link, err)
	}
	if err := os.WriteFile(images[0], []byte("x"), 0o644); err == nil {
		t.Error("wrote into a backup")
	}
	if sha(t, images[0]) != sha(t, img) {
		t.Fatal("the mounted image differs from the volume")
	}

	// The image as a disk: read-only loop device, ext4 mounted without
	// journal replay, every file checked.
	loop := strings.TrimSpace(tool(t, time.Minute, "losetup", "-r", "-f", "--show", images[0]))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	fsdir := filepath.Join(dir, "fs")
	_ = os.Mkdir(fsdir, 0o755)
	tool(t, time.Minute, "mount", "-o", "ro,noload", loop, fsdir)
	got := treeSums(t, fsdir)
	tool(t, time.Minute, "umount", fsdir)
	if len(got) != len(want) {
		t.Errorf("%d files in the backup, want %d", len(got), len(want))
	}
	for p, s := range want {
		if got[p] != s {
			t.Errorf("%s: checksum %s, want %s", p, got[p], s)
		}
	}
	tool(t, time.Minute, "e2fsck", "-fn", loop)
	_ = exec.Command("losetup", "-d", loop).Run()
	// The loop device lets go of the image asynchronously.
	for i := 0; i < 100; i++ {
		out, _ := exec.Command("losetup", "-j", images[0]).Output()
		if len(strings.TrimSpace(string(out))) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	// SIGTERM unmounts cleanly and ends the process.
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		if err != nil {
			t.Fatalf("mount exited with %v\n%s", err, m.log)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("mount did not end on SIGTERM\n%s", m.log)
	}
	if isMounted(mnt) {
		t.Fatal("still mounted after SIGTERM")
	}
	// With the kernel's page cache instead of direct I/O, the same
	// image; and fusermount3 -u from outside ends the mount too.
	m2 := startMount(t, mnt, "--repo", repo, "--kernel-cache")
	m2.waitMounted(t)
	for _, pass := range []string{"first read", "re-read from the page cache"} {
		if sha(t, images[0]) != sha(t, img) {
			t.Fatalf("%s through the kernel cache differs from the volume", pass)
		}
	}
	for i := 0; ; i++ {
		out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput()
		if err == nil {
			break
		}
		// Busy for a moment after mounting on some kernels; the test is
		// about what the mount process does once it is unmounted.
		if i > 50 {
			t.Fatalf("fusermount3 -u %s: %v %s", mnt, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case err := <-m2.done:
		if err != nil {
			t.Fatalf("mount exited with %v after fusermount3 -u\n%s", err, m2.log)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("mount did not end after fusermount3 -u")
	}
}
