package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInventoryTruncated: `truncate -s0 inventory.db` under a daemon's
// state directory. The next start is refused, naming the file and the
// rebuild command. --rebuild-inventory restores the newest copy (the same
// storage uuid, the volume exported again) and imports the backup made
// after that copy from the repository; with no copy left it rebuilds from
// the state directory alone (the volume and both backups again, under a
// new storage uuid) and says what it could not recover.
func TestInventoryTruncated(t *testing.T) {
	requireTools(t, "qemu-io")
	state := filepath.Join(t.TempDir(), "state")
	const vol = "8d3f4b77a6be4e51c24d0f6a5e9c1b02"
	d := startDaemon(t, state)
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"data","diskSize":8388608,"resourceUuid":"`+vol+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	storages := d.do("GET", "/backup-storage", "OAuth "+d.session, "", nil).obj(t)["inventories"].([]any)
	bs := storages[0].(map[string]any)["uuid"].(string)
	uri := "nbd+unix:///" + vol + "?socket=" + filepath.Join(state, "nbd.sock")
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x51 0 8M", uri)
	first := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "first", ""), nil)
	if first.status != 200 {
		t.Fatalf("first backup: %d %s", first.status, first.body)
	}
	d.stop() // a clean stop writes a copy of the inventory

	d = startDaemon(t, state)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x52 2M 1M", uri)
	second := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "second", ""), nil)
	if second.status != 200 {
		t.Fatalf("second backup: %d %s", second.status, second.body)
	}
	secondID := second.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	d.cmd.Process.Kill() // no copy after the second backup
	d.cmd.Wait()

	inv := filepath.Join(state, "inventory.db")
	if err := os.Truncate(inv, 0); err != nil {
		t.Fatal(err)
	}
	r := run(t, "daemon", "--state-dir", state, "--listen", freePort(t))
	if r.code == 0 || !strings.Contains(r.stderr, inv) || !strings.Contains(r.stderr, "--rebuild-inventory") {
		t.Fatalf("start on a truncated inventory: exit %d\n%s", r.code, r.stderr)
	}

	d = startDaemon(t, state, "--rebuild-inventory")
	backups := func(d *daemonProc) map[string]string {
		t.Helper()
		out := map[string]string{}
		for _, b := range d.do("GET", "/volume-backups", "OAuth "+d.session, "", nil).obj(t)["inventories"].([]any) {
			b := b.(map[string]any)
			out[b["uuid"].(string)] = b["status"].(string)
		}
		return out
	}
	got := backups(d)
	if len(got) != 2 || got[secondID] != "Ready" {
		t.Errorf("backups after the rebuild from a copy: %v, want both, %s among them", got, secondID)
	}
	now := d.do("GET", "/backup-storage", "OAuth "+d.session, "", nil).obj(t)["inventories"].([]any)
	if len(now) != 1 || now[0].(map[string]any)["uuid"] != bs {
		t.Errorf("storages after the rebuild from a copy: %v, want %s", now, bs)
	}
	restoreMatches(t, filepath.Join(state, "imagestore"), secondID, uri)
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "restored from the copy") {
		t.Errorf("the rebuild does not say it used a copy:\n%s", b)
	}
	d.stop()

	// No copy left: from the state directory and the repository alone.
	if err := os.RemoveAll(filepath.Join(state, "inventory-copies")); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(inv, 0); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, state, "--rebuild-inventory")
	if got := backups(d); len(got) != 2 || got[secondID] != "Ready" {
		t.Errorf("backups after the rebuild from nothing: %v", got)
	}
	if r := d.do("GET", "/volumes?q=uuid="+vol, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 1 {
		t.Errorf("the volume after the rebuild from nothing: %s", r.body)
	}
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x52 2M 1M", uri) // exported again
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "are not recovered") {
		t.Errorf("the rebuild does not say what it could not recover:\n%s", b)
	}
}
