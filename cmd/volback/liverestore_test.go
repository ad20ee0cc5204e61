package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestLiveRestoreAPI: CreateDataVolumeFromVolumeBackup exports the new
// volume at once; while the (throttled) background copy runs, an NBD
// client reads the whole volume and sees exactly the backup, and its
// writes survive the copy; the job reports progress and ends with the
// volume Ready. A kill -9 in the middle of a second restore resumes after
// the restart, flushed writes intact.
func TestLiveRestoreAPI(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 64<<20)
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "64MiB", "--seed", "5", "--pattern", "rrtz", src)
	tool(t, time.Minute, "nbdcopy", src, uri)
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "source", ""), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	id := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	sock := filepath.Join(state, "nbd.sock")

	const newVol = "aa7196ba2d993236aceddd9b31f5d1aa"
	acc := d.do("POST", "/volumes/data-volume/from/volume-template/"+id, "OAuth "+d.session,
		`{"params":{"name":"restored","resourceUuid":"`+newVol+`","networkReadBandwidth":16777216}}`, nil)
	if acc.status != 202 {
		t.Fatalf("CreateDataVolumeFromVolumeBackup: %d %s", acc.status, acc.body)
	}
	loc := acc.obj(t)["location"].(string)
	started := time.Now()
	newURI := fmt.Sprintf("nbd+unix:///%s?socket=%s", newVol, sock)
	// Usable at once: wait only for the export to appear.
	for i := 0; ; i++ {
		if r := d.do("GET", "/volumes/"+newVol, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) == 1 {
			if st := r.obj(t)["inventories"].([]any)[0].(map[string]any)["status"]; st != "Restoring" {
				t.Fatalf("new volume status %v, want Restoring", st)
			}
			break
		}
		if i > 500 {
			t.Fatal("the new volume never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("volume exported %v after the request", time.Since(started))
	// While the copy runs: write into two chunks, check the job's
	// progress, then read the whole volume.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0xc3 40M 1M", "-c", "write -P 0xc4 63M 512k", newURI)
	b, _ := os.ReadFile(src)
	for off, n, v := 40<<20, 1<<20, byte(0xc3); n > 0; n-- {
		b[off] = v
		off++
	}
	for off, n, v := 63<<20, 512<<10, byte(0xc4); n > 0; n-- {
		b[off] = v
		off++
	}
	want := filepath.Join(dir, "want.raw")
	if err := os.WriteFile(want, b, 0o644); err != nil {
		t.Fatal(err)
	}
	poll := d.getAbs(loc)
	if poll.status != 202 {
		t.Fatalf("the throttled copy ended within %v: %d %s", time.Since(started), poll.status, poll.body)
	}
	if _, ok := poll.obj(t)["progress"]; !ok {
		t.Errorf("running job without progress: %s", poll.body)
	}
	got := filepath.Join(dir, "during.raw")
	tool(t, time.Minute, "nbdcopy", newURI, got)
	if !sameFiles(t, got, want) {
		t.Fatal("the volume read during the restore is not the backup plus the writes")
	}
	done := d.poll(loc)
	if done.status != 200 || done.obj(t)["inventory"].(map[string]any)["status"] != "Ready" {
		t.Fatalf("restore job: %d %s", done.status, done.body)
	}
	t.Logf("restore of 64 MiB at 16 MiB/s finished after %v", time.Since(started))
	after := filepath.Join(dir, "after.raw")
	tool(t, time.Minute, "nbdcopy", newURI, after)
	if !sameFiles(t, after, want) {
		t.Fatal("after the copy, the volume is not the backup plus the client's writes")
	}
	// A volume being restored cannot be backed up yet; this one can.
	if r := d.job("POST", "/volumes/"+newVol+"/volume-backups", backupBody(bs, "of restored", ""), nil); r.status != 200 {
		t.Errorf("backup of the restored volume: %d %s", r.status, r.body)
	}

	// kill -9 in the middle of a second restore, then restart.
	const third = "bb7196ba2d993236aceddd9b31f5d1bb"
	acc = d.do("POST", "/volumes/data-volume/from/volume-template/"+id, "OAuth "+d.session,
		`{"params":{"name":"interrupted","resourceUuid":"`+third+`","networkReadBandwidth":8388608}}`, nil)
	if acc.status != 202 {
		t.Fatalf("second restore: %d %s", acc.status, acc.body)
	}
	thirdURI := fmt.Sprintf("nbd+unix:///%s?socket=%s", third, sock)
	for i := 0; ; i++ {
		if r := d.do("GET", "/volumes/"+third, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) == 1 {
			break
		}
		if i > 500 {
			t.Fatal("the third volume never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// qemu-io flushes before it exits: this write must survive.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0xd5 40M 1M", "-c", "write -P 0xc4 63M 512k", thirdURI)
	r = d.do("POST", "/volumes/"+third+"/volume-backups", "OAuth "+d.session, backupBody(bs, "too early", ""), nil)
	if r.status == 202 {
		if r := d.poll(r.obj(t)["location"].(string)); r.status != 503 {
			t.Errorf("backup of a volume being restored: %d %s", r.status, r.body)
		}
	}
	// Kill once the background copy has made progress, while it runs.
	for i := 0; ; i++ {
		p := d.getAbs(acc.obj(t)["location"].(string))
		if p.status != 202 {
			t.Fatalf("the throttled restore ended before the kill: %d %s", p.status, p.body)
		}
		if prog, _ := p.obj(t)["progress"].(map[string]any); prog != nil && prog["done"].(float64) >= 16<<20 {
			break
		}
		if i > 3000 {
			t.Fatal("the restore made no progress")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	d2 := startDaemon(t, state)
	for i := 0; ; i++ {
		r := d2.do("GET", "/volumes/"+third, "OAuth "+d2.session, "", nil)
		invs := r.obj(t)["inventories"].([]any)
		if len(invs) == 1 && invs[0].(map[string]any)["status"] == "Ready" {
			break
		}
		if i > 3000 {
			t.Fatalf("the interrupted restore never completed: %s", r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for off, n, v := 40<<20, 1<<20, byte(0xd5); n > 0; n-- {
		b[off] = v
		off++
	}
	_ = os.WriteFile(want, b, 0o644)
	final := filepath.Join(dir, "final.raw")
	tool(t, time.Minute, "nbdcopy", fmt.Sprintf("nbd+unix:///%s?socket=%s", third, sock), final)
	if !sameFiles(t, final, want) {
		t.Fatal("after the resumed restore, the volume is not the backup plus the flushed writes")
	}
	if _, err := os.Stat(filepath.Join(state, "restore", third+".json")); !os.IsNotExist(err) {
		t.Error("restore state left behind")
	}
}
