package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
)

// TestGCOnFullRepository: an ImageStore on a file system filled to the
// last byte (a 24 MiB tmpfs) is still collected, once through the API
// (ReclaimSpaceFromImageStore) and once through the CLI (volback gc): the
// collection's marker takes the room the repository's reserve kept, and
// the reserve is back afterwards.
func TestGCOnFullRepository(t *testing.T) {
	requireRoot(t)
	requireTools(t, "nbdcopy")
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	if err := os.Mkdir(full, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", full).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", full).Run() })
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "5a0c1e44d38b4b2f9e1a7c3d2b6f8e01", "5a0c1e44d38b4b2f9e1a7c3d2b6f8e02"
	store := filepath.Join(full, "store")
	uri := setupVolume(t, d, store, bs, vol, 8<<20)
	reserve := func(when string) {
		t.Helper()
		if fi, err := os.Stat(filepath.Join(store, "reserve")); err != nil || fi.Size() != chunkstore.ReserveSize {
			t.Fatalf("%s: reserve %v %v", when, fi, err)
		}
	}
	reserve("after init")

	// backup fills the volume with incompressible data and backs it up.
	seed := uint64(0)
	backup := func(name string) string {
		t.Helper()
		seed++
		data := make([]byte, 8<<20)
		rand.NewChaCha8([32]byte{byte(seed)}).Read(data)
		src := filepath.Join(dir, "src.raw")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		tool(t, time.Minute, "nbdcopy", src, uri)
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, name, `,"mode":"full"`), nil)
		if r.status != 200 {
			t.Fatalf("backup %s: %d %s", name, r.status, r.body)
		}
		return r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	}
	// fill writes a file beside the repository until the file system
	// has no byte left.
	fills := 0
	fill := func() {
		t.Helper()
		fills++
		f, err := os.Create(filepath.Join(full, fmt.Sprintf("filler-%d", fills)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 4096)
		for {
			if _, err = f.Write(buf); err != nil {
				break
			}
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("filling the file system: %v, want ENOSPC", err)
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(full, &st); err != nil || st.Bavail != 0 {
			t.Fatalf("file system not full: %d blocks free (%v)", st.Bavail, err)
		}
	}
	deleteBackup := func(id string) {
		t.Helper()
		if r := d.job("DELETE", "/volume-backups/"+id, "", nil); r.status != 200 {
			t.Fatalf("delete %s on a full file system: %d %s", id, r.status, r.body)
		}
	}

	first, second := backup("one"), backup("two")
	// Deleting needs no room; the room a manifest freed is taken again.
	fill()
	deleteBackup(first)
	fill()
	r := d.job("PUT", "/backup-storage/image-store/"+bs+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil)
	if r.status != 200 || r.obj(t)["size"].(float64) < 8<<20 {
		t.Fatalf("reclaim on a full file system: %d %s", r.status, r.body)
	}
	if gc := r.obj(t)["gc"].(map[string]any); gc["reserveUsed"] != true || gc["reserveError"] != nil {
		t.Errorf("reclaim report %v: want the reserve used and put back", gc)
	}
	reserve("after the API's collection")

	fill()
	deleteBackup(second)
	fill()
	out := mustRun(t, "gc", "--repo", store, "--json")
	if !strings.Contains(out.stdout, `"reserveUsed": true`) || strings.Contains(out.stdout, "reserveError") {
		t.Errorf("volback gc on a full file system: %s", out.stdout)
	}
	reserve("after the CLI's collection")
}
