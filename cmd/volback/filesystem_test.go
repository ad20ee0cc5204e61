package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func fileContent(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 0x42}).Read(b)
	return b
}

func run0(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestLiveBackupOfMountedFilesystem puts ext4 on an export (nbdfuse, a
// loop device, mkfs.ext4, mount), copies files in, then takes a live
// incremental backup while a writer keeps creating files. The restored
// image must pass e2fsck and hold every file that was synced before the
// backup started, and none that was begun after it returned.
func TestLiveBackupOfMountedFilesystem(t *testing.T) {
	requireRoot(t)
	requireTools(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
	dir := t.TempDir()
	vol := sparseFile(t, 512<<20)
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(dir, "repo")
	mustRun(t, "repo", "init", "--repo", repo, "--chunk-size", "1MiB")

	fuseDir := filepath.Join(dir, "fuse")
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(fuseDir, 0o755)
	os.MkdirAll(mnt, 0o755)
	fuse := exec.Command("nbdfuse", filepath.Join(fuseDir, "disk"), s.uri("vol1"))
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", fuseDir).Run()
		fuse.Wait()
	})
	disk := filepath.Join(fuseDir, "disk")
	for i := 0; ; i++ {
		if st, err := os.Stat(disk); err == nil && st.Size() == 512<<20 {
			break
		}
		if i > 500 {
			t.Fatal("nbdfuse did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	loop := strings.TrimSpace(tool(t, time.Minute, "losetup", "-f", "--show", "--direct-io=on", disk))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	run0(t, "mkfs.ext4", "-q", "-F", loop)
	run0(t, "mount", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})

	// Files present before any backup.
	sums := map[string][32]byte{}
	for i := range 40 {
		name := fmt.Sprintf("base-%03d", i)
		data := fileContent(uint64(i), 256<<10+i*100)
		if err := os.WriteFile(filepath.Join(mnt, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(data)
	}
	run0(t, "sync")
	full := s.backup(repo, "vol1")
	if full.Mode != "full" {
		t.Fatalf("first backup mode %s", full.Mode)
	}

	// The writer: each file is written, fsynced with its directory, and
	// only then recorded as done.
	type record struct{ started, done time.Time }
	var mu sync.Mutex
	records := map[int]record{}
	stop := make(chan struct{})
	writerErr := make(chan error, 1)
	go func() {
		d, err := os.Open(mnt)
		if err != nil {
			writerErr <- err
			return
		}
		defer d.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				writerErr <- nil
				return
			default:
			}
			start := time.Now()
			f, err := os.Create(filepath.Join(mnt, fmt.Sprintf("live-%05d", i)))
			if err == nil {
				_, err = f.Write(fileContent(uint64(1000+i), 64<<10))
			}
			if err == nil {
				err = f.Sync()
			}
			if err == nil {
				err = f.Close()
			}
			if err == nil {
				err = d.Sync()
			}
			if err != nil {
				writerErr <- err
				return
			}
			mu.Lock()
			records[i] = record{started: start, done: time.Now()}
			mu.Unlock()
		}
	}()
	// waitFiles waits until n files are synced, counting those begun
	// after since: the writer must run on both sides of the backup.
	waitFiles := func(n int, since time.Time) {
		for deadline := time.Now().Add(time.Minute); ; {
			mu.Lock()
			k := 0
			for _, r := range records {
				if r.started.After(since) {
					k++
				}
			}
			mu.Unlock()
			if k >= n {
				return
			}
			select {
			case err := <-writerErr:
				t.Fatalf("writer: %v", err)
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("the writer synced %d of %d files in a minute", k, n)
			}
		}
	}
	waitFiles(20, time.Time{})
	t0 := time.Now()
	inc := s.backup(repo, "vol1")
	t1 := time.Now()
	waitFiles(20, t1)
	close(stop)
	if err := <-writerErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	if inc.Mode != "incremental" || inc.Parent != full.ID {
		t.Fatalf("live backup: mode %s parent %s, want incremental from %s", inc.Mode, inc.Parent, full.ID)
	}
	t.Logf("incremental: read %d of %d chunks in %.3f s while the writer ran", inc.Stats.ChunksRead, inc.Stats.ChunksTotal, inc.Seconds)

	// Restore, replay the journal as a mount would, then check.
	img := filepath.Join(dir, "restored.raw")
	mustRun(t, "restore", "--repo", repo, inc.ID, img)
	run0(t, "e2fsck", "-E", "journal_only", "-y", img)
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn on the restored image: %v\n%s", err, out)
	}
	rmnt := filepath.Join(dir, "rmnt")
	os.MkdirAll(rmnt, 0o755)
	run0(t, "mount", "-o", "ro,loop", img, rmnt)
	defer exec.Command("umount", rmnt).Run()

	for name, sum := range sums {
		b, err := os.ReadFile(filepath.Join(rmnt, name))
		if err != nil || sha256.Sum256(b) != sum {
			t.Errorf("base file %s missing or wrong in the backup (%v)", name, err)
		}
	}
	before, after, between := 0, 0, 0
	mu.Lock()
	defer mu.Unlock()
	for i, r := range records {
		p := filepath.Join(rmnt, fmt.Sprintf("live-%05d", i))
		b, err := os.ReadFile(p)
		switch {
		case r.done.Before(t0):
			before++
			if err != nil || !bytes.Equal(b, fileContent(uint64(1000+i), 64<<10)) {
				t.Errorf("live-%05d was synced before the backup started but is missing or wrong (%v)", i, err)
			}
		case r.started.After(t1):
			after++
			if err == nil {
				t.Errorf("live-%05d was begun after the backup returned but is in it", i)
			}
		default:
			between++
		}
	}
	t.Logf("writer files: %d synced before the backup (all present), %d begun after it (all absent), %d in flight during its start", before, after, between)
	if before == 0 || after == 0 {
		t.Fatalf("the writer did not run on both sides of the backup (%d before, %d after)", before, after)
	}
	// Unmount the live filesystem before the server stops.
	exec.Command("umount", mnt).Run()
	mounted = false
}
