package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBackupOverNBD: a backup exported read-only over NBD, by `volback
// serve --backup` and by the daemon under the backup's uuid: qemu-img and
// nbdcopy pull it bit-identical, base:allocation shows its zero chunks as
// holes, and writes are refused.
func TestBackupOverNBD(t *testing.T) {
	requireTools(t, "qemu-io", "qemu-img", "nbdcopy", "nbdinfo")
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	store := filepath.Join(dir, "store")
	uri := setupVolume(t, d, store, bs, vol, 32<<20)
	// Data in chunks 0-1 and 5; chunks 2-4 and 6-7 stay zero.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 5M", "-c", "write -P 0x33 21M 1M", uri)
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "exported", ""), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	id := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	// The volume changes after the backup; the export shows the backup.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", uri)

	serveState := filepath.Join(dir, "serve")
	startServe(t, serveState, []string{"serve", "--state-dir", serveState, "--backup", id, "--repo", store})
	for name, u := range map[string]string{
		"daemon": fmt.Sprintf("nbd+unix:///%s?socket=%s", id, filepath.Join(d.state, "nbd.sock")),
		"serve":  fmt.Sprintf("nbd+unix:///%s?socket=%s", id, filepath.Join(serveState, "nbd.sock")),
	} {
		out := filepath.Join(dir, name+".raw")
		tool(t, time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", u, out)
		if !sameFiles(t, out, live) {
			t.Errorf("%s: qemu-img convert of the backup differs from the volume at backup time", name)
		}
		os.Remove(out)
		tool(t, time.Minute, "nbdcopy", u, out)
		if !sameFiles(t, out, live) {
			t.Errorf("%s: nbdcopy of the backup differs", name)
		}
		m := tool(t, time.Minute, "nbdinfo", "--map", u)
		want := []string{"0     8388608    0  data", "8388608    12582912    3  hole,zero", "20971520     4194304    0  data", "25165824     8388608    3  hole,zero"}
		for _, w := range want {
			if !strings.Contains(strings.Join(strings.Fields(m), " "), strings.Join(strings.Fields(w), " ")) {
				t.Errorf("%s: nbdinfo --map lacks %q:\n%s", name, w, m)
			}
		}
		if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", u).CombinedOutput(); err == nil && !strings.Contains(string(out), "failed") {
			t.Errorf("%s: a write to a backup export succeeded: %s", name, out)
		}
		if ro := tool(t, time.Minute, "nbdinfo", u); !strings.Contains(ro, "is_read_only: true") {
			t.Errorf("%s: export not read-only:\n%s", name, ro)
		}
	}
	// An unknown backup is no export.
	if out, err := exec.Command("nbdinfo", fmt.Sprintf("nbd+unix:///%s?socket=%s", strings.Repeat("ab", 16), filepath.Join(d.state, "nbd.sock"))).CombinedOutput(); err == nil {
		t.Errorf("nbdinfo of an unknown backup succeeded: %s", out)
	}
	// Through the daemon, `volback mount --storage` mounts the storage's
	// repository; the image is the backup.
	mnt := filepath.Join(dir, "mnt")
	m := startMount(t, mnt, "--storage", bs, "--api", strings.TrimSuffix(d.base, "/zstack/v1"))
	m.waitMounted(t)
	if sha(t, filepath.Join(mnt, vol, id+".raw")) != sha(t, live) {
		t.Error("image mounted through the daemon differs")
	}
}

// TestMountS3 mounts a repository in an S3 bucket by URL.
func TestMountS3(t *testing.T) {
	requireRoot(t)
	requireTools(t, "qemu-io", "nbdcopy", "fusermount3")
	_, srv := targetEnv(t)
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 24<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x42 3M 9M", uri)
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "in s3", "", "fsInfo::type::s3::url::"+srv.Endpoint+"/backups/m"), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	inv := r.obj(t)["inventory"].(map[string]any)
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	mnt := filepath.Join(dir, "mnt")
	m := startMount(t, mnt, "--repo", installRepo(t, inv))
	m.waitMounted(t)
	if sha(t, filepath.Join(mnt, "by-name", "in s3.raw")) != sha(t, live) {
		t.Error("image mounted from S3 differs from the volume")
	}
}
