package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestAPICopies: SyncBackupFromImageStoreBackupStorage copies a backup to
// a second storage, which then serves it alone; a later backup sharing
// most chunks sends only its new ones; RecoverBackupFromImageStoreBackupStorage
// copies it back.
func TestAPICopies(t *testing.T) {
	d := startTestDaemon(t)
	ctx := context.Background()
	const bs1, bs2, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "2c4b0a3a24533c4faa9b156a0ef98fd0", "ec7196ba2d993236aceddd9b31f5d19b"
	d.storageAndVolume(bs1, vol, 16<<20)
	if r := d.job("POST", "/backup-storage/image-store", fmt.Sprintf(`{"params":{"name":"offsite","url":"%s/offsite","resourceUuid":"%s"}}`, d.dir, bs2), nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	v := d.api.Host.Volume(vol)
	data := make([]byte, 16<<20)
	_, _ = rand.NewChaCha8([32]byte{5}).Read(data)
	if err := v.WriteAt(ctx, data, 0, true); err != nil {
		t.Fatal(err)
	}
	backup := func(name string) string {
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"%s"}}`, bs1, name), nil)
		if r.status != 200 {
			t.Fatalf("backup: %d %s", r.status, r.body)
		}
		return r.json(t)["inventory"].(map[string]any)["uuid"].(string)
	}
	type stats struct {
		Chunks, ChunksSent, ChunksPresent int
		AlreadyCopied                     bool
	}
	copyTo := func(id, action, src, dst string) (map[string]any, stats) {
		t.Helper()
		r := d.job("PUT", "/volume-backups/"+id+"/actions", fmt.Sprintf(`{"%s":{"srcBackupStorageUuid":"%s","dstBackupStorageUuid":"%s"}}`, action, src, dst), nil)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", action, r.status, r.body)
		}
		var st stats
		b, _ := json.Marshal(r.json(t)["copy"])
		_ = json.Unmarshal(b, &st)
		return r.json(t)["inventory"].(map[string]any), st
	}
	first := backup("first")
	inv, st := copyTo(first, "syncBackupFromImageStoreBackupStorage", bs1, bs2)
	if refs := inv["backupStorageRefs"].([]any); len(refs) != 2 || st.Chunks != 4 || st.ChunksSent != 4 {
		t.Fatalf("first copy: %d refs, %+v", len(refs), st)
	}
	if _, st := copyTo(first, "syncBackupFromImageStoreBackupStorage", bs1, bs2); !st.AlreadyCopied {
		t.Errorf("copying again moved something: %+v", st)
	}

	// One chunk changes: the next backup's copy sends that chunk only.
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 5<<20, true); err != nil {
		t.Fatal(err)
	}
	second := backup("second")
	if _, st := copyTo(second, "syncBackupFromImageStoreBackupStorage", bs1, bs2); st.ChunksSent != 1 || st.ChunksPresent != 3 {
		t.Errorf("copy of a backup sharing 3 of its 4 chunks: %+v, want 1 sent", st)
	}

	// The first storage loses the copy: the second restores it alone,
	// and RecoverBackupFromImageStoreBackupStorage brings it back.
	if r := d.job("DELETE", "/volume-backups/"+second+"?backupStorageUuids="+bs1, "", nil); r.status != 200 {
		t.Fatalf("delete the first copy: %d %s", r.status, r.body)
	}
	r := d.job("POST", "/volumes/data-volume/from/volume-template/"+second, `{"params":{"name":"from-offsite"}}`, nil)
	if r.status != 200 {
		t.Fatalf("restore from the only copy: %d %s", r.status, r.body)
	}
	restored := r.json(t)["inventory"].(map[string]any)["uuid"].(string)
	got := make([]byte, len(data))
	copy(data[5<<20:], bytes.Repeat([]byte{7}, 4096))
	if err := d.api.Host.Volume(restored).ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("volume restored from the copy differs: %v", err)
	}
	inv, st = copyTo(second, "recoverBackupFromImageStoreBackupStorage", bs1, bs2)
	if refs := inv["backupStorageRefs"].([]any); len(refs) != 2 || st.ChunksSent != 0 || st.ChunksPresent != 4 {
		t.Errorf("recover to the first storage: %d refs, %+v (its chunks are still there)", len(refs), st)
	}

	for _, bad := range []string{
		`{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"` + bs1 + `"}}`,
		`{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"` + bs1 + `","dstBackupStorageUuid":"` + bs1 + `"}}`,
		`{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"` + bs1 + `","dstBackupStorageUuid":"ffffffffffffffffffffffffffffffff"}}`,
	} {
		if r := d.do("PUT", "/volume-backups/"+first+"/actions", "OAuth "+d.session, bad, nil); r.status != 503 {
			t.Errorf("%s: %d %s, want 503", bad, r.status, r.body)
		}
	}
}
