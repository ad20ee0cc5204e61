package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRevert: RevertVolumeFromVolumeBackup leaves the volume bit-identical
// to the backup, writing exactly the chunks that differ; it is refused
// while an NBD client is attached unless forced; afterwards the chain's
// next backup reads the whole volume and says why.
func TestRevert(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 40<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 12M", "-c", "write -P 0x21 30M 2M", uri)
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "good", ""), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	id := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	good := filepath.Join(dir, "good.raw")
	tool(t, time.Minute, "nbdcopy", uri, good)

	// Damage three chunks: one overwritten (chunk 1), one zeroed (chunk
	// 7, which held data), one written where the backup has zeros (9).
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x99 5M 100k", "-c", "write -z 28M 4M", "-c", "write -P 0x11 37M 1M", uri)

	revert := `{"revertVolumeFromVolumeBackup":{}}`
	// An attached client blocks it.
	requirePythonNBD(t)
	{
		release := holdNBD(t, uri)
		r := d.do("PUT", "/volume-backups/"+id+"/actions", "OAuth "+d.session, revert, nil)
		if r.status != 503 || zcode(t, r) != "SYS.1006" || !strings.Contains(string(r.body), "NBD clients connected") {
			t.Errorf("revert with a client attached: %d %s", r.status, r.body)
		}
		release()
		d.waitConnections(0)
	}
	r = d.job("PUT", "/volume-backups/"+id+"/actions", revert, nil)
	if r.status != 200 {
		t.Fatalf("revert: %d %s", r.status, r.body)
	}
	st := r.obj(t)["revert"].(map[string]any)
	if st["chunksWritten"] != float64(3) || st["bytesWritten"] != float64(3*4<<20) || st["chunksSame"] != float64(7) {
		t.Errorf("revert wrote %v, want exactly the 3 chunks that differ (12 MiB)", st)
	}
	now := filepath.Join(dir, "now.raw")
	tool(t, time.Minute, "nbdcopy", uri, now)
	if !sameFiles(t, now, good) {
		t.Fatal("the reverted volume differs from the backup")
	}
	// A second revert finds nothing to write.
	r = d.job("PUT", "/volume-backups/"+id+"/actions", revert, nil)
	if st := r.obj(t)["revert"].(map[string]any); st["chunksWritten"] != float64(0) {
		t.Errorf("second revert wrote %v", st)
	}
	// The next backup of the chain is a full read, saying why.
	r = d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "after revert", ""), nil)
	md := metadata(t, r.obj(t)["inventory"].(map[string]any))
	if md["mode"] != "full" || !strings.Contains(fmt.Sprint(md["fullReason"]), "reverted to backup "+id) {
		t.Errorf("backup after the revert: %v", md)
	}
	// Errors: unknown backup, unknown action, forced revert accepted.
	if r := d.do("PUT", "/volume-backups/"+strings.Repeat("c", 32)+"/actions", "OAuth "+d.session, revert, nil); r.status != 503 || zcode(t, r) != "SYS.1003" {
		t.Errorf("unknown backup: %d %s", r.status, r.body)
	}
	if r := d.do("PUT", "/volume-backups/"+id+"/actions", "OAuth "+d.session, `{"frobnicate":{}}`, nil); r.status != 400 || !strings.HasPrefix(string(r.body), "the body doesn't contain action mapping to the URL[") {
		t.Errorf("unknown action: %d %s", r.status, r.body)
	}
	if r := d.job("PUT", "/volume-backups/"+id+"/actions", `{"revertVolumeFromVolumeBackup":{"force":true}}`, nil); r.status != 200 {
		t.Errorf("forced revert: %d %s", r.status, r.body)
	}
}
