package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/dataplane/qmp/qmptest"
)

// TestDaemonQEMUVolume: a disk of a running qemu-storage-daemon (which
// serves its own NBD export meanwhile) registered with --volume
// UUID=qmp:///...?node=NODE is backed up by CreateVolumeBackup like any
// volume: full, then incremental from QEMU's bitmap; both restore with
// the CLI to the disk as it was.
func TestDaemonQEMUVolume(t *testing.T) {
	qmptest.Require(t)
	requireTools(t, "qemu-img", "qemu-io", "nbdcopy")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	tool(t, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", img, "48M")
	own := filepath.Join(dir, "own.sock")
	q := qmptest.Start(t, "--blockdev", "driver=file,filename="+img+",node-name=file0",
		"--blockdev", "driver=qcow2,file=file0,node-name=disk0",
		"--nbd-server", "addr.type=unix,addr.path="+own,
		"--export", "type=nbd,id=own,node-name=disk0,name=own,writable=on")
	uri := "nbd+unix:///own?socket=" + own
	const bs, vol, vm = "5c4b0a3a24533c4faa9b156a0ef98fdf", "cc7196ba2d993236aceddd9b31f5d19b", "dd7196ba2d993236aceddd9b31f5d19b"
	d := startDaemon(t, filepath.Join(dir, "state"), "--volume", vol+"=qmp://"+q.QMP+"?node=disk0&nbd="+own+",type=Root,vm="+vm)
	store := filepath.Join(dir, "store")
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	r := d.do("GET", "/volumes/"+vol, "OAuth "+d.session, "", nil)
	if !strings.Contains(string(r.body), `"size":50331648`) || !strings.Contains(string(r.body), vm) {
		t.Fatalf("QueryVolume: %s", r.body)
	}
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 6M", "-c", "write -P 0x21 30M 2M", uri)
	var prev string
	for i, change := range []string{"", "write -P 0x77 12M 256k"} {
		if change != "" {
			tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", change, uri)
		}
		live := filepath.Join(dir, fmt.Sprintf("live-%d.raw", i))
		tool(t, time.Minute, "nbdcopy", uri, live)
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, fmt.Sprint("q-", i), ""), nil)
		if r.status != 200 {
			t.Fatalf("backup %d: %d %s", i, r.status, r.body)
		}
		inv := r.obj(t)["inventory"].(map[string]any)
		md := metadata(t, inv)
		wantMode := "full"
		if i > 0 {
			wantMode = "incremental"
		}
		if md["mode"] != wantMode || (i > 0 && md["parent"] != prev) {
			t.Fatalf("backup %d: metadata %v", i, md)
		}
		out := filepath.Join(dir, fmt.Sprintf("out-%d.raw", i))
		mustRun(t, "restore", "--repo", store, inv["uuid"].(string), out)
		if !sameFiles(t, out, live) {
			t.Fatalf("backup %d restores to something else than the disk", i)
		}
		prev = inv["uuid"].(string)
		t.Logf("backup %d: %s, %v chunks read", i, md["mode"], md["chunksRead"])
	}
	// Revert: the disk changed since; RevertVolumeFromVolumeBackup writes
	// the backup back through an export on QEMU's own NBD server (nbd=),
	// and the next backup starts the chain over, full.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x99 2M 3M", uri)
	r = d.job("PUT", "/volume-backups/"+prev+"/actions", `{"revertVolumeFromVolumeBackup":{"backupStorageUuid":"`+bs+`"}}`, nil)
	if r.status != 200 || !strings.Contains(string(r.body), `"chunksWritten":`) {
		t.Fatalf("revert: %d %s", r.status, r.body)
	}
	now := filepath.Join(dir, "after-revert.raw")
	tool(t, time.Minute, "nbdcopy", uri, now)
	if !sameFiles(t, now, filepath.Join(dir, "live-1.raw")) {
		t.Fatal("the disk does not hold the backup after the revert")
	}
	r = d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "after-revert", ""), nil)
	if md := metadata(t, r.obj(t)["inventory"].(map[string]any)); r.status != 200 || md["mode"] != "full" || md["fullReason"] == nil {
		t.Fatalf("backup after the revert: %d %v", r.status, md)
	}
}

// TestDaemonQEMUVmBackup: CreateVmBackup of a VM whose two disks are in
// one qemu-storage-daemon takes both in one QMP transaction, twice (full,
// then incremental), each restoring to its disk as it was.
func TestDaemonQEMUVmBackup(t *testing.T) {
	qmptest.Require(t)
	requireTools(t, "qemu-img", "qemu-io", "nbdcopy")
	dir := t.TempDir()
	own := filepath.Join(dir, "own.sock")
	args := []string{"--nbd-server", "addr.type=unix,addr.path=" + own}
	for _, n := range []string{"root", "data"} {
		img := filepath.Join(dir, n+".qcow2")
		tool(t, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
		args = append(args, "--blockdev", "driver=file,filename="+img+",node-name=file-"+n,
			"--blockdev", "driver=qcow2,file=file-"+n+",node-name="+n,
			"--export", "type=nbd,id=own-"+n+",node-name="+n+",name="+n+",writable=on")
	}
	q := qmptest.Start(t, args...)
	const bs, rootVol, dataVol, vm = "6c4b0a3a24533c4faa9b156a0ef98fdf", "ee7196ba2d993236aceddd9b31f5d19b", "ef7196ba2d993236aceddd9b31f5d19b", "f07196ba2d993236aceddd9b31f5d19b"
	d := startDaemon(t, filepath.Join(dir, "state"),
		"--volume", rootVol+"=qmp://"+q.QMP+"?node=root,type=Root,vm="+vm,
		"--volume", dataVol+"=qmp://"+q.QMP+"?node=data,type=Data,vm="+vm)
	store := filepath.Join(dir, "store")
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	uri := func(n string) string { return "nbd+unix:///" + n + "?socket=" + own }
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", uri("root"))
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x22 8M 2M", uri("data"))
	for round := 0; round < 2; round++ {
		if round == 1 {
			tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 64k", uri("root"))
			tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x44 9M 64k", uri("data"))
		}
		live := map[string]string{}
		for vol, n := range map[string]string{rootVol: "root", dataVol: "data"} {
			live[vol] = filepath.Join(dir, fmt.Sprintf("live-%s-%d.raw", n, round))
			tool(t, time.Minute, "nbdcopy", uri(n), live[vol])
		}
		r := d.job("POST", "/volumes/"+rootVol+"/vm-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"vm"}}`, nil)
		if r.status != 200 {
			t.Fatalf("CreateVmBackup %d: %d %s", round, r.status, r.body)
		}
		invs := r.obj(t)["inventories"].([]any)
		if len(invs) != 2 {
			t.Fatalf("CreateVmBackup: %s", r.body)
		}
		for _, x := range invs {
			inv := x.(map[string]any)
			md := metadata(t, inv)
			want := map[int]string{0: "full", 1: "incremental"}[round]
			if md["mode"] != want || inv["groupUuid"] == "" || md["consistency"] != "crash" || md["consistencyNote"] != "no guest agent channel" {
				t.Fatalf("round %d: %v", round, inv)
			}
			out := filepath.Join(dir, fmt.Sprintf("out-%d.raw", round))
			os.Remove(out)
			mustRun(t, "restore", "--repo", store, inv["uuid"].(string), out)
			if !sameFiles(t, out, live[inv["volumeUuid"].(string)]) {
				t.Fatalf("round %d: backup of %s differs from its disk", round, inv["volumeUuid"])
			}
		}
	}
}

// TestGuestQEMUSource: a real guest (qemu-system-x86_64 under TCG) writes
// ordered, checksummed blocks to a qcow2 disk QEMU opens itself; the
// daemon backs the disk up live through QMP twice (full, incremental;
// the sink reaches QEMU by getfd), and each backup restores to a prefix
// of the guest's writes holding every block acknowledged before it. With
// the guest's agent on a serial channel, the backups freeze the guest
// around their instant: each is recorded application-consistent and
// holds exactly the blocks written when the guest froze.
func TestGuestQEMUSource(t *testing.T) {
	requireTools(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	tool(t, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	qmpSock, agentSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "qga.sock")
	g := startGuestWith(t, "-qmp", "unix:"+qmpSock+",server=on,wait=off",
		"-chardev", "socket,id=qga0,path="+agentSock+",server=on,wait=off", "-device", "isa-serial,chardev=qga0",
		"-blockdev", "driver=file,filename="+img+",node-name=file0,cache.direct=on",
		"-blockdev", "driver=qcow2,file=file0,node-name=disk0",
		"-device", "nvme,drive=disk0,serial=volback,id=nvme0")
	const bs, vol, vm = "7c4b0a3a24533c4faa9b156a0ef98fdf", "a17196ba2d993236aceddd9b31f5d19b", "a27196ba2d993236aceddd9b31f5d19b"
	d := startDaemon(t, filepath.Join(dir, "state"), "--volume", vol+"=qmp://"+qmpSock+"?node=disk0&agent="+agentSock+",type=Root,vm="+vm)
	store := filepath.Join(dir, "store")
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	acked := g.waitAck(64, 3*time.Minute)
	var last int64
	for round := 0; round < 2; round++ {
		if round == 1 {
			acked = g.waitAck(last+32, 3*time.Minute)
		}
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, fmt.Sprint("guest-", round), ""), nil)
		if r.status != 200 {
			t.Fatalf("backup %d: %d %s", round, r.status, r.body)
		}
		inv := r.obj(t)["inventory"].(map[string]any)
		md := metadata(t, inv)
		if want := map[int]string{0: "full", 1: "incremental"}[round]; md["mode"] != want {
			t.Fatalf("backup %d: %v", round, md)
		}
		out := filepath.Join(dir, fmt.Sprintf("out-%d.raw", round))
		mustRun(t, "restore", "--repo", store, inv["uuid"].(string), out)
		last = checkPrefix(t, out, acked)
		if md["consistency"] != "application" {
			t.Fatalf("backup %d: %v, want application-consistent", round, md)
		}
		frozen := frozenAt(t, g)
		if int64(len(frozen)) != int64(round+1) || frozen[round] != last {
			t.Fatalf("backup %d holds %d blocks; the guest froze at %v", round, last, frozen)
		}
		t.Logf("backup %d (%s, %s): a prefix of %d blocks, %d acknowledged before it, frozen at %d", round, md["mode"], md["consistency"], last, acked, frozen[round])
	}
}

var frozenRE = regexp.MustCompile(`(?m)^frozen (\d+)`)

// frozenAt lists the block counts the guest reported at each freeze.
func frozenAt(t *testing.T, g *guest) []int64 {
	t.Helper()
	b, _ := os.ReadFile(g.log)
	var out []int64
	for _, m := range frozenRE.FindAllSubmatch(b, -1) {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		out = append(out, n)
	}
	return out
}

// TestDaemonQEMUVolumeByAPI: CreateDataVolume with the system tag
// qemuVolume::qmp:///SOCK?node=NODE records a disk QEMU holds (its size
// from QEMU), which backs up like any volume and deletes without touching
// the disk; a wrong diskSize or an unreachable QEMU is refused.
func TestDaemonQEMUVolumeByAPI(t *testing.T) {
	qmptest.Require(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	tool(t, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", img, "8M")
	q := qmptest.Start(t, "--blockdev", "driver=file,filename="+img+",node-name=file0", "--blockdev", "driver=qcow2,file=file0,node-name=disk0")
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "8c4b0a3a24533c4faa9b156a0ef98fdf", "b17196ba2d993236aceddd9b31f5d19b"
	store := filepath.Join(dir, "store")
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	tag := func(u string) string { return `"systemTags":["qemuVolume::` + u + `"]` }
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"q","diskSize":4096,"resourceUuid":"`+vol+`"},`+tag("qmp://"+q.QMP+"?node=disk0")+`}`, nil); r.status == 200 {
		t.Fatalf("a wrong diskSize was accepted: %s", r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"q","resourceUuid":"`+vol+`"},`+tag("qmp://"+dir+"/nothing.sock?node=disk0")+`}`, nil); r.status == 200 {
		t.Fatalf("an unreachable QEMU was accepted: %s", r.body)
	}
	r := d.job("POST", "/volumes/data", `{"params":{"name":"q","resourceUuid":"`+vol+`"},`+tag("qmp://"+q.QMP+"?node=disk0")+`}`, nil)
	if r.status != 200 || !strings.Contains(string(r.body), `"size":8388608`) {
		t.Fatalf("CreateDataVolume with qemuVolume: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "q", ""), nil); r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	if r := d.job("DELETE", "/volumes/"+vol, "", nil); r.status != 200 {
		t.Fatalf("DeleteDataVolume: %d %s", r.status, r.body)
	}
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("deleting the volume touched the disk: %v", err)
	}
}
