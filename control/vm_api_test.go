package control

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// TestAPIVmBackups: a VM's root and attached data volume backed up as one
// group (one groupUuid, found by q=groupUuid=), reverted, copied to a
// second storage, scanned back after the inventory lost them, deleted; a
// detached volume leaves the VM's next backup.
func TestAPIVmBackups(t *testing.T) {
	d := startTestDaemon(t)
	ctx := context.Background()
	const bs1, bs2 = "1c4b0a3a24533c4faa9b156a0ef98fdf", "2c4b0a3a24533c4faa9b156a0ef98fd0"
	const root, data, vm = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	d.storageAndVolume(bs1, root, 2<<20)
	if r := d.job("POST", "/backup-storage/image-store", fmt.Sprintf(`{"params":{"name":"offsite","url":"%s/offsite","resourceUuid":"%s"}}`, d.dir, bs2), nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"data","diskSize":2097152,"resourceUuid":"`+data+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	// The root volume is the VM's (as volback daemon --volume
	// UUID=PATH,type=Root,vm=VM records it); the data volume attaches.
	if err := d.api.DB.SetVolumeVM(ctx, root, vm, "Root"); err != nil {
		t.Fatal(err)
	}
	auth := "OAuth " + d.session
	if r := d.job("POST", "/volumes/"+data+"/vm-instances/"+vm, "", nil); r.status != 200 || r.json(t)["inventory"].(map[string]any)["vmInstanceUuid"] != vm {
		t.Fatalf("AttachDataVolumeToVm: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volumes?q=vmInstanceUuid="+vm+"&replyWithCount=true", auth, "", nil); r.json(t)["total"] != float64(2) {
		t.Fatalf("the VM's volumes: %s", r.body)
	}
	fill := func(id string, b byte) []byte {
		p := bytes.Repeat([]byte{b}, 2<<20)
		if err := d.api.Host.Volume(id).WriteAt(ctx, p, 0, true); err != nil {
			t.Fatal(err)
		}
		return p
	}
	read := func(id string) []byte {
		p := make([]byte, 2<<20)
		if err := d.api.Host.Volume(id).ReadAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wantRoot, wantData := fill(root, 1), fill(data, 2)

	r := d.job("POST", "/volumes/"+root+"/vm-backups", `{"params":{"backupStorageUuid":"`+bs1+`","name":"vm-1"}}`, nil)
	if r.status != 200 {
		t.Fatalf("CreateVmBackup: %d %s", r.status, r.body)
	}
	invs := r.json(t)["inventories"].([]any)
	if len(invs) != 2 {
		t.Fatalf("CreateVmBackup answered %d inventories, want 2: %s", len(invs), r.body)
	}
	group := invs[0].(map[string]any)["groupUuid"].(string)
	if invs[0].(map[string]any)["volumeUuid"] != root || invs[1].(map[string]any)["groupUuid"] != group || invs[0].(map[string]any)["vmInstanceUuid"] != vm {
		t.Fatalf("group inventories: %s", r.body)
	}
	if r := d.do("GET", "/volume-backups?q=groupUuid="+group+"&replyWithCount=true", auth, "", nil); r.json(t)["total"] != float64(2) {
		t.Fatalf("q=groupUuid=: %s", r.body)
	}

	// Revert the VM: both volumes back to the group.
	fill(root, 9)
	fill(data, 9)
	if r := d.job("PUT", "/vm-backups/"+group+"/actions", `{"revertVmFromVmBackup":{"backupStorageUuid":"`+bs1+`"}}`, nil); r.status != 200 {
		t.Fatalf("RevertVmFromVmBackup: %d %s", r.status, r.body)
	}
	if !bytes.Equal(read(root), wantRoot) || !bytes.Equal(read(data), wantData) {
		t.Fatal("the reverted VM's volumes differ from its backup")
	}

	// Copy the group off site.
	r = d.job("PUT", "/vm-backups/"+group+"/actions", `{"syncVmBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"`+bs1+`","dstBackupStorageUuid":"`+bs2+`"}}`, nil)
	if r.status != 200 || len(r.json(t)["inventories"].([]any)) != 2 {
		t.Fatalf("SyncVmBackupFromImageStoreBackupStorage: %d %s", r.status, r.body)
	}
	for _, inv := range r.json(t)["inventories"].([]any) {
		if refs := inv.(map[string]any)["backupStorageRefs"].([]any); len(refs) != 2 {
			t.Fatalf("a copied group member has %d copies: %v", len(refs), inv)
		}
	}

	// The inventory loses the group; a scan of the offsite storage finds
	// it whole again.
	for _, inv := range invs {
		if err := d.api.DB.DeleteVolumeBackup(ctx, inv.(map[string]any)["uuid"].(string)); err != nil {
			t.Fatal(err)
		}
	}
	r = d.job("PUT", "/vm-backups/imageStore/"+bs2+"/actions", `{"syncVmBackup":{}}`, nil)
	if r.status != 200 {
		t.Fatalf("SyncVmBackup: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volume-backups?q=groupUuid="+group+"&q=vmInstanceUuid="+vm+"&replyWithCount=true", auth, "", nil); r.json(t)["total"] != float64(2) {
		t.Fatalf("after the scan: %s", r.body)
	}

	// Delete the group, copy by copy.
	if r := d.job("DELETE", "/vm-backups/"+group+"?backupStorageUuids="+bs2+"&deleteMode=Permissive", "", nil); r.status != 200 {
		t.Fatalf("DeleteVmBackup: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volume-backups?q=groupUuid="+group+"&replyWithCount=true", auth, "", nil); r.json(t)["total"] != float64(0) {
		t.Fatalf("after DeleteVmBackup: %s", r.body)
	}

	// Detached, the data volume is no longer in the VM's backups.
	if r := d.job("DELETE", "/volumes/"+data+"/vm-instances?vmUuid="+vm, "", nil); r.status != 200 {
		t.Fatalf("DetachDataVolumeFromVm: %d %s", r.status, r.body)
	}
	r = d.job("POST", "/volumes/"+root+"/vm-backups", `{"params":{"backupStorageUuid":"`+bs1+`","name":"vm-2"}}`, nil)
	if r.status != 200 || len(r.json(t)["inventories"].([]any)) != 1 {
		t.Fatalf("VM backup after the detach: %d %s", r.status, r.body)
	}

	// Errors.
	taken := r.json(t)["inventories"].([]any)[0].(map[string]any)["groupUuid"].(string)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/volumes/" + root + "/vm-backups", `{"params":{"backupStorageUuid":"` + bs1 + `","name":"x","resourceUuid":"` + taken + `"}}`},
		{"POST", "/volumes/" + data + "/vm-backups", `{"params":{"backupStorageUuid":"` + bs1 + `","name":"x"}}`},
		{"POST", "/volumes/" + root + "/vm-instances/" + vm, ""},
		{"DELETE", "/vm-backups/ffffffffffffffffffffffffffffffff", ""},
		{"PUT", "/vm-backups/ffffffffffffffffffffffffffffffff/actions", `{"revertVmFromVmBackup":{}}`},
	} {
		if r := d.do(c.method, c.path, auth, c.body, nil); r.status != 503 {
			t.Errorf("%s %s: %d %s, want 503", c.method, c.path, r.status, r.body)
		}
	}
}
