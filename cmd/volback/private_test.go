package main

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPrivateFiles: with umask 0 and a state directory created 0755
// beforehand, nothing the daemon writes (the inventory and its WAL, the
// inventory copies, volumes, changed-block state, the default ImageStore
// and one added through the API) can be read by another local user: every
// directory is 0700 and every file 0600, and `cat` as nobody fails on each.
// A repository loosened afterwards is reported by the CLI.
func TestPrivateFiles(t *testing.T) {
	requireRoot(t)
	requireTools(t, "setpriv", "qemu-io")
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil { // so only our own modes stop nobody
			t.Fatal(err)
		}
	}
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	state := filepath.Join(base, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, state)
	const bs, vol = "a1b2c3d4e5f60718293a4b5c6d7e8f90", "a1b2c3d4e5f60718293a4b5c6d7e8f91"
	store := filepath.Join(base, "store")
	uri := setupVolume(t, d, store, bs, vol, 8<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x61 0 8M", uri)
	if r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "private", ""), nil); r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	defaultStore := d.do("GET", "/backup-storage", "OAuth "+d.session, "", nil).obj(t)["inventories"].([]any)
	for _, s := range defaultStore {
		if s := s.(map[string]any); s["uuid"] != bs {
			if r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(s["uuid"].(string), "default", ""), nil); r.status != 200 {
				t.Fatalf("backup to the default store: %d %s", r.status, r.body)
			}
		}
	}
	d.stop()
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "tightened to 0700") {
		t.Errorf("no log line for the tightened state directory:\n%s", b)
	}

	files := 0
	for _, root := range []string{state, store} {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := e.Info()
			if err != nil {
				return err
			}
			if fi.Mode()&fs.ModeSocket != 0 {
				return nil
			}
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s is %04o", p, fi.Mode().Perm())
			}
			if fi.Mode().IsRegular() {
				files++
				cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", p)
				if out, err := cmd.CombinedOutput(); err == nil {
					t.Errorf("nobody read %s (%d bytes)", p, len(out))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files < 10 {
		t.Fatalf("only %d files checked", files)
	}
	t.Logf("%d files, none readable by nobody", files)

	if err := os.Chmod(store, 0o755); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "ls", "--repo", store); r.code != 0 || !strings.Contains(r.stderr, "readable by other local users") {
		t.Errorf("ls on a loosened repository: exit %d, %s", r.code, r.stderr)
	}
}
