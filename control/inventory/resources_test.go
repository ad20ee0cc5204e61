package inventory

import (
	"context"
	"errors"
	"testing"
)

func TestVolumeBackupRecords(t *testing.T) {
	ctx := context.Background()
	d, _, path := openTest(t)
	bs := &BackupStorage{UUID: "bs1", Name: "store", Type: "ImageStoreBackupStorage", URL: "/srv/backup"}
	if err := d.AddBackupStorage(ctx, bs); err != nil {
		t.Fatal(err)
	}
	if got, err := d.GetBackupStorage(ctx, "bs1"); err != nil || got.URL != "/srv/backup" || got.SystemTags != "[]" {
		t.Fatalf("GetBackupStorage: %+v %v", got, err)
	}
	v := &Volume{UUID: "v1", Name: "data", Path: "/vol", Size: 1 << 30, Type: "Data", State: "Enabled", Status: "Ready"}
	if err := d.AddVolume(ctx, v); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"backup-1", "backup-2", "other"} {
		b := &VolumeBackup{UUID: "b" + string(rune('1'+i)), VolumeUUID: "v1", Name: name, Type: "Data", State: "Enabled", Status: "Creating", Mode: "full", JobUUID: "job" + string(rune('1'+i))}
		if err := d.CreateVolumeBackup(ctx, b, BackupStorageRef{BackupStorageUUID: "bs1", InstallPath: "/srv/backup/manifests/" + b.UUID, Status: "Creating"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.FinishVolumeBackup(ctx, "b1", "Ready", 1<<30, `{"mode":"full"}`); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishVolumeBackup(ctx, "b2", "Ready", 1<<30, `{}`); err != nil {
		t.Fatal(err)
	}
	ids, total, err := d.Query(ctx, VolumeBackups, &Query{Conditions: []Condition{{Field: "name", Op: OpLike, Values: []string{"backup-%"}}},
		SortField: "name", SortDesc: true, Limit: 10})
	if err != nil || total != 2 || len(ids) != 2 {
		t.Fatalf("query: %v total %d err %v", ids, total, err)
	}
	got, err := d.GetVolumeBackups(ctx, ids)
	if err != nil || len(got) != 2 || got[0].Name != "backup-2" || len(got[0].Refs) != 1 || got[0].Refs[0].Status != StatusReady {
		t.Fatalf("load: %v err %v", got, err)
	}
	page, total, _ := d.Query(ctx, VolumeBackups, &Query{Limit: 1, Start: 1})
	if total != 3 || len(page) != 1 {
		t.Fatalf("paging: %d of %d", len(page), total)
	}
	// A restart finds the backup still Creating, with its refs and job;
	// deleting it takes its refs.
	d.Close()
	d2, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	left, err := d2.CreatingBackups(ctx)
	if err != nil || len(left) != 1 || left[0].UUID != "b3" || len(left[0].Refs) != 1 || left[0].JobUUID != "job3" {
		t.Fatalf("creating backups: %+v %v", left, err)
	}
	if err := d2.DeleteVolumeBackup(ctx, "b3"); err != nil {
		t.Fatal(err)
	}
	if _, total, _ := d2.Query(ctx, VolumeBackups, &Query{Limit: 10}); total != 2 {
		t.Fatalf("%d backups after abandoning, want 2", total)
	}
	var refs int
	d2.db.QueryRow(`SELECT COUNT(*) FROM volume_backup_refs`).Scan(&refs)
	if refs != 2 {
		t.Fatalf("%d refs left, want 2 (cascade)", refs)
	}
	if err := d2.DeleteVolumeBackup(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
}
