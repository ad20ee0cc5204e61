package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/storetest"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// TestRecoverBackups: the state a daemon killed between a durable manifest
// and the Ready record leaves (records Creating, jobs running), settled the
// way the next start settles it. A complete backup becomes Ready and its
// job succeeds with the backup's inventory; one without a manifest is
// dropped and its job fails; a VM backup is whole (both members Ready, the
// job answers both) or gone (one member lacking: both records and the
// finished member's manifest removed); a manifest of another volume under
// the id is never taken for the backup, nor deleted.
func TestRecoverBackups(t *testing.T) {
	ctx := context.Background()
	d := startTestDaemon(t)
	bs1, vol1, vol2 := chunkstore.NewID(), chunkstore.NewID(), chunkstore.NewID()
	d.storageAndVolume(bs1, vol1, 1<<20)
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"v2","diskSize":1048576,"resourceUuid":"`+vol2+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	a := d.api
	for i, v := range []string{vol1, vol2} {
		if err := a.Host.Volume(v).WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1), 7}, 256<<10), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	bs, err := a.DB.GetBackupStorage(ctx, bs1)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := a.openRepo(ctx, storageSpec(bs), target.Env{}, target.RepoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()

	// left records a backup of vol as a killed job left it; written says
	// whether its manifest became durable.
	left := func(job, group, vol string, written bool) string {
		t.Helper()
		id := chunkstore.NewID()
		vrec, err := a.DB.GetVolume(ctx, vol)
		if err != nil {
			t.Fatal(err)
		}
		rec := &inventory.VolumeBackup{UUID: id, VolumeUUID: vol, Name: "b-" + vol, Type: vrec.Type, State: inventory.StateEnabled,
			Status: inventory.StatusCreating, Size: vrec.Size, Mode: "auto", UserTags: "[]", GroupUUID: group, JobUUID: job}
		ref := inventory.BackupStorageRef{BackupStorageUUID: bs1, InstallPath: installPath(storageSpec(bs), id), Status: inventory.StatusCreating}
		if err := a.DB.CreateVolumeBackup(ctx, rec, ref); err != nil {
			t.Fatal(err)
		}
		if written {
			if _, err := a.Host.Volume(vol).Backup(ctx, repo, dataplane.LiveBackupOptions{Chain: "recover-" + vol + "-" + id, ID: id}); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	newJob := func(api string) string {
		id := chunkstore.NewID()
		if err := a.DB.CreateJob(ctx, id, api, ""); err != nil {
			t.Fatal(err)
		}
		return id
	}
	jobDone, jobLost := newJob("CreateVolumeBackup"), newJob("CreateVolumeBackup")
	done := left(jobDone, "", vol1, true)
	lost := left(jobLost, "", vol1, false)
	jobVM, jobHalf := newJob("CreateVmBackup"), newJob("CreateVmBackup")
	vmA, vmB := left(jobVM, "g1", vol1, true), left(jobVM, "g1", vol2, true)
	halfA, halfB := left(jobHalf, "g2", vol1, true), left(jobHalf, "g2", vol2, false)
	// Another volume's backup under the id this record names.
	foreign := left("", "", vol1, false)
	if _, err := a.Host.Volume(vol2).Backup(ctx, repo, dataplane.LiveBackupOptions{Chain: "other", ID: foreign}); err != nil {
		t.Fatal(err)
	}

	ready, dropped, err := a.RecoverBackups(ctx)
	if err != nil || ready != 3 || dropped != 4 {
		t.Fatalf("RecoverBackups: %d ready, %d dropped, %v; want 3 and 4", ready, dropped, err)
	}
	failed, _ := json.Marshal(map[string]*ErrorCode{"error": errRefused("operation failed", "the daemon stopped")})
	if _, err := a.DB.FailRunningJobs(ctx, failed); err != nil {
		t.Fatal(err)
	}

	for _, id := range []string{done, vmA, vmB} {
		b, err := a.DB.GetVolumeBackup(ctx, id)
		if err != nil || b.Status != inventory.StatusReady || b.Refs[0].Status != inventory.StatusReady || b.JobUUID != "" {
			t.Fatalf("backup %s after recovery: %+v %v, want Ready", id, b, err)
		}
		var md backupMetadata
		if err := json.Unmarshal([]byte(b.Metadata), &md); err != nil || md.ChunksTotal != 1 || md.BytesRead != 1<<20 {
			t.Errorf("backup %s metadata %s: %v", id, b.Metadata, err)
		}
	}
	for _, id := range []string{lost, halfA, halfB, foreign} {
		if _, err := a.DB.GetVolumeBackup(ctx, id); !errors.Is(err, inventory.ErrNotFound) {
			t.Errorf("backup %s after recovery: %v, want dropped", id, err)
		}
	}
	if _, err := repo.LoadManifest(ctx, halfA); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("the finished member of a half VM backup: %v, want its manifest removed", err)
	}
	if m, err := repo.LoadManifest(ctx, foreign); err != nil || m.VolumeID != vol2 {
		t.Errorf("the other volume's manifest: %v %v, want it kept", m, err)
	}

	var one struct {
		Inventory backupInventory `json:"inventory"`
	}
	if r := d.do("GET", "/api-jobs/"+jobDone, "", "", nil); r.status != 200 || json.Unmarshal([]byte(r.body), &one) != nil || one.Inventory.UUID != done || one.Inventory.Status != "Ready" {
		t.Errorf("job of the finished backup: %d %s", r.status, r.body)
	}
	var group struct {
		Inventories []backupInventory `json:"inventories"`
	}
	if r := d.do("GET", "/api-jobs/"+jobVM, "", "", nil); r.status != 200 || json.Unmarshal([]byte(r.body), &group) != nil || len(group.Inventories) != 2 {
		t.Errorf("job of the whole VM backup: %d %s", r.status, r.body)
	}
	for _, job := range []string{jobLost, jobHalf} {
		if r := d.do("GET", "/api-jobs/"+job, "", "", nil); r.status != 503 {
			t.Errorf("job %s of an unfinished backup: %d %s, want 503", job, r.status, r.body)
		}
	}
	// The recovered backup restores: it is a real one.
	if rep, err := repo.Verify(ctx, []string{done}, chunkstore.VerifyOptions{}); err != nil || !rep.OK() || rep.Bytes == 0 {
		t.Errorf("verify %s: %+v %v", done, rep, err)
	}
}

// TestSyncSkipsBadManifest: SyncVolumeBackup over a repository with one
// truncated manifest imports the good backups and names the bad one.
func TestSyncSkipsBadManifest(t *testing.T) {
	ctx := context.Background()
	d := startTestDaemon(t)
	bs, vol := chunkstore.NewID(), chunkstore.NewID()
	d.storageAndVolume(bs, vol, 1<<20)
	var ids []string
	for i := range 3 {
		if err := d.api.Host.Volume(vol).WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"b"}}`, nil)
		var got struct {
			Inventory backupInventory `json:"inventory"`
		}
		if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("backup: %d %s", r.status, r.body)
		}
		ids = append(ids, got.Inventory.UUID)
		// Forgotten by the inventory, as a repository another daemon wrote.
		if err := d.api.DB.DeleteVolumeBackup(ctx, got.Inventory.UUID); err != nil {
			t.Fatal(err)
		}
	}
	victim := filepath.Join(d.dir, "store-"+bs, "manifests", ids[1])
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	r := d.job("PUT", "/volume-backups/imageStore/"+bs+"/actions", `{"syncVolumeBackup":{}}`, nil)
	var got struct {
		Result struct {
			New int `json:"newBackupCount"`
		} `json:"result"`
		Bad []chunkstore.BadManifest `json:"badManifests"`
	}
	if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil || got.Result.New != 2 || len(got.Bad) != 1 || got.Bad[0].ID != ids[1] {
		t.Fatalf("sync with a bad manifest: %d %s", r.status, r.body)
	}
	for _, id := range []string{ids[0], ids[2]} {
		if b, err := d.api.DB.GetVolumeBackup(ctx, id); err != nil || b.Status != inventory.StatusReady {
			t.Errorf("backup %s after the sync: %v %v", id, b, err)
		}
	}
}

// TestSyncManyForeignBackups: a repository holding more backups the
// inventory does not know than IndexAfter (another daemon's) imports them
// all from one listing and the summaries of that listing.
func TestSyncManyForeignBackups(t *testing.T) {
	ctx := context.Background()
	d := startTestDaemon(t)
	bs, vol := chunkstore.NewID(), chunkstore.NewID()
	d.storageAndVolume(bs, vol, 1<<20)
	repo, err := local.OpenRepository(ctx, filepath.Join(d.dir, "store-"+bs))
	if err != nil {
		t.Fatal(err)
	}
	n := chunkstore.IndexAfter + 36
	ids := storetest.SaveManifests(t, repo, n, 4)
	repo.Close()
	r := d.job("PUT", "/volume-backups/imageStore/"+bs+"/actions", `{"syncVolumeBackup":{}}`, nil)
	var got struct {
		Result struct {
			New int `json:"newBackupCount"`
		} `json:"result"`
	}
	if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil || got.Result.New != n {
		t.Fatalf("sync of %d foreign backups: %d %s", n, r.status, r.body)
	}
	for _, id := range ids {
		b, err := d.api.DB.GetVolumeBackup(ctx, id)
		if err != nil || b.Status != inventory.StatusReady {
			t.Fatalf("backup %s after the sync: %v %v", id, b, err)
		}
	}
}
