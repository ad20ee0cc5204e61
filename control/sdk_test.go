package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
)

// The shapes below are those of the official ZStack Go SDK
// (zstackio/zstack-sdk-go-v2, pkg/param and pkg/view; the module proxy
// does not serve it): the JSON field names and types a client built on it
// sends and reads. Parameters are sent with their zero values, as builds
// of the SDK without omitempty send them.

type SDKBaseParam struct {
	SystemTags []string `json:"systemTags,omitempty"`
	UserTags   []string `json:"userTags,omitempty"`
	RequestIP  string   `json:"requestIp,omitempty"`
}

type sdkAddImageStoreBackupStorage struct {
	SDKBaseParam
	Params struct {
		Hostname     string   `json:"hostname"`
		Username     string   `json:"username"`
		Password     string   `json:"password"`
		SSHPort      int      `json:"sshPort"`
		URL          string   `json:"url"`
		Name         string   `json:"name"`
		Description  string   `json:"description"`
		Type         string   `json:"type"`
		ImportImages bool     `json:"importImages"`
		ResourceUUID string   `json:"resourceUuid"`
		TagUUIDs     []string `json:"tagUuids"`
	} `json:"params"`
}

type sdkCreateDataVolume struct {
	SDKBaseParam
	Params struct {
		Name               string   `json:"name"`
		Description        string   `json:"description"`
		DiskOfferingUUID   string   `json:"diskOfferingUuid"`
		DiskSize           int64    `json:"diskSize"`
		PrimaryStorageUUID string   `json:"primaryStorageUuid"`
		ResourceUUID       string   `json:"resourceUuid"`
		TagUUIDs           []string `json:"tagUuids"`
	} `json:"params"`
}

type sdkCreateVolumeBackup struct {
	SDKBaseParam
	Params struct {
		VolumeUUID            string   `json:"volumeUuid"`
		BackupStorageUUID     string   `json:"backupStorageUuid"`
		Name                  string   `json:"name"`
		Description           string   `json:"description"`
		Mode                  string   `json:"mode"`
		VolumeReadBandwidth   int64    `json:"volumeReadBandwidth"`
		VolumeWriteBandwidth  int64    `json:"volumeWriteBandwidth"`
		NetworkReadBandwidth  int64    `json:"networkReadBandwidth"`
		NetworkWriteBandwidth int64    `json:"networkWriteBandwidth"`
		ResourceUUID          string   `json:"resourceUuid"`
		TagUUIDs              []string `json:"tagUuids"`
	} `json:"params"`
}

type sdkRevertVolumeFromVolumeBackup struct {
	UUID              string `json:"uuid"`
	BackupStorageUUID string `json:"backupStorageUuid"`
}

type sdkCreateDataVolumeFromVolumeBackup struct {
	SDKBaseParam
	Params struct {
		BackupUUID         string   `json:"backupUuid"`
		Name               string   `json:"name"`
		Description        string   `json:"description"`
		BackupStorageUUID  string   `json:"backupStorageUuid"`
		PrimaryStorageUUID string   `json:"primaryStorageUuid"`
		HostUUID           string   `json:"hostUuid"`
		ResourceUUID       string   `json:"resourceUuid"`
		TagUUIDs           []string `json:"tagUuids"`
	} `json:"params"`
}

// sdkTime is the SDK's ZStackTime: Gson's "Jan 2, 2006 3:04:05 PM".
type sdkTime struct{ time.Time }

func (t *sdkTime) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a date must be a string: %s", b)
	}
	if s == "" {
		return nil
	}
	v, err := time.ParseInLocation(GsonTime, s, time.Local)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

type SDKBaseInfo struct {
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	Description string `json:"description"`
}

type SDKBaseTime struct {
	CreateDate sdkTime `json:"createDate"`
	LastOpDate sdkTime `json:"lastOpDate"`
}

type sdkSessionView struct {
	UUID        string  `json:"uuid"`
	AccountUUID string  `json:"accountUuid"`
	UserUUID    string  `json:"userUuid"`
	ExpiredDate sdkTime `json:"expiredDate"`
	CreateDate  sdkTime `json:"createDate"`
}

type sdkBackupStorageView struct {
	SDKBaseInfo
	SDKBaseTime
	URL               string `json:"url"`
	TotalCapacity     int64  `json:"totalCapacity"`
	AvailableCapacity int64  `json:"availableCapacity"`
	Type              string `json:"type"`
	State             string `json:"state"`
	Status            string `json:"status"`
	Hostname          string `json:"hostname"`
	Username          string `json:"username"`
}

type sdkVolumeView struct {
	SDKBaseInfo
	SDKBaseTime
	InstallPath string `json:"installPath"`
	Type        string `json:"type"`
	Format      string `json:"format"`
	Size        int64  `json:"size"`
	State       string `json:"state"`
	Status      string `json:"status"`
	VMInstance  string `json:"vmInstanceUuid"`
}

type sdkBackupRefView struct {
	SDKBaseTime
	VolumeBackupUUID  string `json:"volumeBackupUuid"`
	BackupStorageUUID string `json:"backupStorageUuid"`
	InstallPath       string `json:"installPath"`
	Status            string `json:"status"`
}

type sdkVolumeBackupView struct {
	SDKBaseInfo
	SDKBaseTime
	VolumeUUID        string             `json:"volumeUuid"`
	Type              string             `json:"type"`
	State             string             `json:"state"`
	Status            string             `json:"status"`
	Size              int64              `json:"size"`
	Metadata          string             `json:"metadata"`
	GroupUUID         string             `json:"groupUuid"`
	Mode              string             `json:"mode"`
	VMInstanceUUID    string             `json:"vmInstanceUuid"`
	BackupStorageRefs []sdkBackupRefView `json:"backupStorageRefs"`
}

type sdkUserTagView struct {
	SDKBaseTime
	UUID         string `json:"uuid"`
	ResourceUUID string `json:"resourceUuid"`
	ResourceType string `json:"resourceType"`
	Tag          string `json:"tag"`
	Type         string `json:"type"`
}

type sdkSyncVolumeBackupEvent struct {
	Result struct {
		DeletedBackupCount int `json:"deletedBackupCount"`
		NewBackupCount     int `json:"newBackupCount"`
	} `json:"result"`
}

// decodeView decodes key of an answer into a view and checks nothing is
// lost: every field of the view that the answer holds decodes to a value
// that encodes back to the answer's (dates compared as instants).
func decodeView(t *testing.T, body []byte, key string, view any) {
	t.Helper()
	var whole map[string]json.RawMessage
	if err := json.Unmarshal(body, &whole); err != nil {
		t.Fatalf("answer %s: %v", body, err)
	}
	raw := json.RawMessage(body)
	if key != "" {
		raw = whole[key]
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(view); err != nil {
		t.Fatalf("decoding %s into %T: %v", raw, view, err)
	}
	var ours any
	_ = json.Unmarshal(raw, &ours)
	checkFields(t, reflect.ValueOf(view).Elem(), ours, key)
}

func checkFields(t *testing.T, v reflect.Value, ours any, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Slice:
		list, _ := ours.([]any)
		if v.Len() != len(list) {
			t.Errorf("%s: %d elements decoded of %d", path, v.Len(), len(list))
			return
		}
		for i := range list {
			checkFields(t, v.Index(i), list[i], fmt.Sprintf("%s[%d]", path, i))
		}
		return
	case reflect.Struct:
		if tm, ok := v.Addr().Interface().(*sdkTime); ok {
			s, _ := ours.(string)
			want, err := time.ParseInLocation(GsonTime, s, time.Local)
			if err != nil || !tm.Equal(want) {
				t.Errorf("%s: date %q decoded as %v", path, s, tm.Time)
			}
			return
		}
		obj, _ := ours.(map[string]any)
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if f.Anonymous {
				checkFields(t, v.Field(i), ours, path)
				continue
			}
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if val, ok := obj[name]; ok {
				checkFields(t, v.Field(i), val, path+"."+name)
			}
		}
		return
	}
	got, _ := json.Marshal(v.Interface())
	want, _ := json.Marshal(ours)
	if !bytes.Equal(got, want) {
		t.Errorf("%s: we answered %s, the SDK's view holds %s", path, want, got)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOfficialSDKShapes sends the JSON the official Go SDK sends for each
// call we serve and decodes every answer into its views.
func TestOfficialSDKShapes(t *testing.T) {
	d := startTestDaemon(t)
	ctx := context.Background()
	c := d.client()

	// LogInByAccount.
	r := c.Do("PUT", "/accounts/login", "", mustJSON(t, map[string]any{"logInByAccount": map[string]string{
		"accountName": "admin", "password": inventory.HashPassword("password")}}), nil)
	var session sdkSessionView
	decodeView(t, r.Body, "inventory", &session)
	if r.Status != 200 || session.ExpiredDate.Sub(session.CreateDate.Time) != SessionTTL {
		t.Fatalf("login: %d %+v", r.Status, session)
	}

	// Two ImageStores, the second holding a copy of the backup.
	var storages [2]sdkBackupStorageView
	for i := range storages {
		var p sdkAddImageStoreBackupStorage
		p.Params.Name, p.Params.URL = fmt.Sprintf("store-%d", i), fmt.Sprintf("%s/store-%d", d.dir, i)
		p.Params.Hostname, p.Params.Username, p.Params.Password = "127.0.0.1", "root", "x"
		r := c.Job("POST", "/backup-storage/image-store", mustJSON(t, p), nil)
		if r.Status != 200 {
			t.Fatalf("AddImageStoreBackupStorage: %d %s", r.Status, r.Body)
		}
		decodeView(t, r.Body, "inventory", &storages[i])
		if storages[i].UUID == "" || storages[i].URL != p.Params.URL || storages[i].Type != "ImageStoreBackupStorage" {
			t.Fatalf("storage view %+v", storages[i])
		}
	}
	bs1, bs2 := storages[0].UUID, storages[1].UUID

	// CreateDataVolume, written to.
	var cv sdkCreateDataVolume
	cv.Params.Name, cv.Params.DiskSize = "data", 4<<20
	r = c.Job("POST", "/volumes/data", mustJSON(t, cv), nil)
	var vol sdkVolumeView
	decodeView(t, r.Body, "inventory", &vol)
	if r.Status != 200 || vol.Size != 4<<20 || vol.Type != "Data" {
		t.Fatalf("CreateDataVolume: %d %s", r.Status, r.Body)
	}
	content := bytes.Repeat([]byte("volback!"), 512<<10/8)
	if err := d.api.Host.Volume(vol.UUID).WriteAt(ctx, content, 1<<20, true); err != nil {
		t.Fatal(err)
	}

	// CreateVolumeBackup with every zero the SDK sends, and user tags.
	var cb sdkCreateVolumeBackup
	cb.Params.VolumeUUID, cb.Params.BackupStorageUUID, cb.Params.Name = vol.UUID, bs1, "sdk-backup"
	cb.UserTags = []string{"sdk::tag"}
	r = c.Job("POST", "/volumes/"+vol.UUID+"/volume-backups", mustJSON(t, cb), nil)
	if r.Status != 200 {
		t.Fatalf("CreateVolumeBackup: %d %s", r.Status, r.Body)
	}
	var backup sdkVolumeBackupView
	decodeView(t, r.Body, "inventory", &backup)
	if backup.Name != "sdk-backup" || backup.Status != "Ready" || len(backup.BackupStorageRefs) != 1 || backup.BackupStorageRefs[0].BackupStorageUUID != bs1 {
		t.Fatalf("backup view %+v", backup)
	}

	// QueryVolumeBackup and QueryUserTag as the SDK encodes them.
	q := url.Values{"q": {"uuid=" + backup.UUID}, "replyWithCount": {"true"}, "start": {"0"}, "limit": {"50"}}
	r = c.Do("GET", "/volume-backups?"+q.Encode(), "OAuth "+d.session, "", nil)
	var list []sdkVolumeBackupView
	decodeView(t, r.Body, "inventories", &list)
	if len(list) != 1 || list[0].UUID != backup.UUID || !bytes.Contains(r.Body, []byte(`"total":1`)) {
		t.Fatalf("QueryVolumeBackup: %s", r.Body)
	}
	r = c.Do("GET", "/user-tags?"+url.Values{"q": {"resourceUuid=" + backup.UUID}}.Encode(), "OAuth "+d.session, "", nil)
	var tags []sdkUserTagView
	decodeView(t, r.Body, "inventories", &tags)
	if len(tags) != 1 || tags[0].Tag != "sdk::tag" {
		t.Fatalf("QueryUserTag: %s", r.Body)
	}

	// A copy on the second storage (as a copy between storages leaves
	// it), found by SyncVolumeBackup.
	copyBackup(t, d, storages[0].URL, storages[1].URL, backup.UUID)
	r = c.Job("PUT", "/volume-backups/imageStore/"+bs2+"/actions", mustJSON(t, map[string]any{"syncVolumeBackup": map[string]string{"imageStoreUuid": bs2}}), nil)
	var sync sdkSyncVolumeBackupEvent
	decodeView(t, r.Body, "", &sync)
	if r.Status != 200 || sync.Result.NewBackupCount != 0 || sync.Result.DeletedBackupCount != 0 {
		t.Fatalf("SyncVolumeBackup: %d %s", r.Status, r.Body)
	}
	r = c.Do("GET", "/volume-backups/"+backup.UUID, "OAuth "+d.session, "", nil)
	decodeView(t, r.Body, "inventories", &list)
	if len(list[0].BackupStorageRefs) != 2 {
		t.Fatalf("after the sync the backup has %d copies, want 2: %s", len(list[0].BackupStorageRefs), r.Body)
	}

	// The copy on the first storage loses its manifest behind the
	// inventory's back: only the copy on the second storage can serve.
	repo1 := openTestRepo(t, d, storages[0].URL)
	if err := repo1.DeleteManifest(ctx, backup.UUID); err != nil {
		t.Fatal(err)
	}
	repo1.Close()

	// CreateDataVolumeFromVolumeBackup from the second storage's copy: a
	// Data volume holding the backup.
	var cf sdkCreateDataVolumeFromVolumeBackup
	cf.Params.BackupUUID, cf.Params.Name, cf.Params.BackupStorageUUID = backup.UUID, "restored", bs2
	r = c.Job("POST", "/volumes/data-volume/from/volume-template/"+backup.UUID, mustJSON(t, cf), nil)
	var restored sdkVolumeView
	decodeView(t, r.Body, "inventory", &restored)
	if r.Status != 200 || restored.Type != "Data" || restored.Status != "Ready" {
		t.Fatalf("CreateDataVolumeFromVolumeBackup: %d %s", r.Status, r.Body)
	}
	got := make([]byte, len(content))
	if err := d.api.Host.Volume(restored.UUID).ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("restored volume: %v", err)
	}
	if r := c.Job("POST", "/volumes/data-volume/from/volume-template/"+backup.UUID, mustJSON(t, map[string]any{"params": map[string]string{"name": "from-1", "backupStorageUuid": bs1}}), nil); r.Status != 503 {
		t.Errorf("restore from the copy whose manifest is gone: %d %s, want 503", r.Status, r.Body)
	}

	// RevertVolumeFromVolumeBackup, with the manual's spelling and the
	// SDK's, from the second storage.
	if err := d.api.Host.Volume(vol.UUID).WriteAt(ctx, bytes.Repeat([]byte{0xee}, 4096), 1<<20, true); err != nil {
		t.Fatal(err)
	}
	for _, body := range []any{
		map[string]any{"revertVolumeFromVolumeBackup": map[string]string{"backupStrogeUuid": bs2}},
		map[string]any{"revertVolumeFromVolumeBackup": sdkRevertVolumeFromVolumeBackup{UUID: backup.UUID, BackupStorageUUID: bs2}},
	} {
		r = c.Job("PUT", "/volume-backups/"+backup.UUID+"/actions", mustJSON(t, body), nil)
		if r.Status != 200 {
			t.Fatalf("revert with %s: %d %s", mustJSON(t, body), r.Status, r.Body)
		}
		if err := d.api.Host.Volume(vol.UUID).ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("reverted volume differs from the backup: %v", err)
		}
	}

	// SyncVolumeBackup on the first storage drops its lost copy.
	r = c.Job("PUT", "/volume-backups/imageStore/"+bs1+"/actions", mustJSON(t, map[string]any{"syncVolumeBackup": map[string]string{"imageStoreUuid": bs1}}), nil)
	decodeView(t, r.Body, "", &sync)
	if r.Status != 200 || sync.Result.DeletedBackupCount != 1 || sync.Result.NewBackupCount != 0 {
		t.Fatalf("SyncVolumeBackup after a lost copy: %d %s", r.Status, r.Body)
	}

	// DeleteVolumeBackup of the copies on named storages, then of all.
	copyBackup(t, d, storages[1].URL, storages[0].URL, backup.UUID)
	c.Job("PUT", "/volume-backups/imageStore/"+bs1+"/actions", `{"syncVolumeBackup":{}}`, nil)
	if r := c.Job("DELETE", "/volume-backups/"+backup.UUID+"?backupStorageUuids="+bs1+"&deleteMode=Permissive", "", nil); r.Status != 200 {
		t.Fatalf("delete the copy on %s: %d %s", bs1, r.Status, r.Body)
	}
	r = c.Do("GET", "/volume-backups/"+backup.UUID, "OAuth "+d.session, "", nil)
	decodeView(t, r.Body, "inventories", &list)
	if len(list) != 1 || len(list[0].BackupStorageRefs) != 1 || list[0].BackupStorageRefs[0].BackupStorageUUID != bs2 {
		t.Fatalf("after deleting one copy: %s", r.Body)
	}
	if repo := openTestRepo(t, d, storages[0].URL); true {
		if ok, _ := repo.HasManifest(ctx, backup.UUID); ok {
			t.Error("the deleted copy's manifest is still in its repository")
		}
		repo.Close()
	}
	if r := c.Job("DELETE", "/volume-backups/"+backup.UUID+"?deleteMode=Sometimes", "", nil); r.Status != 503 || errCode(t, httpResult{r.Status, r.Body}) != CodeInvalidArg {
		t.Errorf("unknown deleteMode: %d %s", r.Status, r.Body)
	}
	if r := c.Job("DELETE", "/volume-backups/"+backup.UUID+"?deleteMode=Enforcing", "", nil); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	r = c.Do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d.session, "", nil)
	if !bytes.Contains(r.Body, []byte(`"total":0`)) {
		t.Fatalf("after deleting every copy: %s", r.Body)
	}

	// DeleteDataVolume as the SDK sends it.
	if r := c.Job("DELETE", "/volumes/"+restored.UUID+"?deleteMode=Permissive", "", nil); r.Status != 200 {
		t.Errorf("DeleteDataVolume: %d %s", r.Status, r.Body)
	}
}

// copyBackup copies a backup's chunks and manifest from one ImageStore's
// repository to another's (re-keyed: each repository has its own seeds).
func copyBackup(t *testing.T, d *testDaemon, from, to, id string) {
	t.Helper()
	ctx := context.Background()
	src, dst := openTestRepo(t, d, from), openTestRepo(t, d, to)
	defer src.Close()
	defer dst.Close()
	m, err := src.LoadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range m.Chunks {
		if k.IsZero() {
			continue
		}
		data, err := src.GetChunk(ctx, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.Chunks[i] = dst.Key(data)
		if _, err := dst.PutChunk(ctx, m.Chunks[i], data); err != nil {
			t.Fatal(err)
		}
	}
	if err := dst.SaveManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
}

func openTestRepo(t *testing.T, d *testDaemon, dir string) *chunkstore.Repository {
	t.Helper()
	repo, err := d.api.openRepo(context.Background(), target.Spec{Kind: target.Local, URL: dir}, target.Env{}, target.RepoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

type sdkCreateVmBackup struct {
	SDKBaseParam
	Params struct {
		RootVolumeUUID        string   `json:"rootVolumeUuid"`
		BackupStorageUUID     string   `json:"backupStorageUuid"`
		Name                  string   `json:"name"`
		Description           string   `json:"description"`
		Mode                  string   `json:"mode"`
		VolumeReadBandwidth   int64    `json:"volumeReadBandwidth"`
		VolumeWriteBandwidth  int64    `json:"volumeWriteBandwidth"`
		NetworkReadBandwidth  int64    `json:"networkReadBandwidth"`
		NetworkWriteBandwidth int64    `json:"networkWriteBandwidth"`
		ResourceUUID          string   `json:"resourceUuid"`
		TagUUIDs              []string `json:"tagUuids"`
	} `json:"params"`
}

type sdkCopy struct {
	UUID                 string `json:"uuid"`
	SrcBackupStorageUUID string `json:"srcBackupStorageUuid"`
	DstBackupStorageUUID string `json:"dstBackupStorageUuid"`
}

// TestOfficialSDKShapesVm: the SDK's VM-backup and copy calls, their
// answers decoded into its views.
func TestOfficialSDKShapesVm(t *testing.T) {
	d := startTestDaemon(t)
	ctx := context.Background()
	c := d.client()
	const bs1, bs2 = "1c4b0a3a24533c4faa9b156a0ef98fdf", "2c4b0a3a24533c4faa9b156a0ef98fd0"
	const root, data, vm = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	d.storageAndVolume(bs1, root, 1<<20)
	if r := d.job("POST", "/backup-storage/image-store", fmt.Sprintf(`{"params":{"name":"offsite","url":"%s/offsite","resourceUuid":"%s"}}`, d.dir, bs2), nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"data","diskSize":1048576,"resourceUuid":"`+data+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	if err := d.api.DB.SetVolumeVM(ctx, root, vm, "Root"); err != nil {
		t.Fatal(err)
	}
	r := c.Job("POST", "/volumes/"+data+"/vm-instances/"+vm, mustJSON(t, map[string]any{"params": map[string]string{"volumeUuid": data, "vmInstanceUuid": vm}}), nil)
	var vol sdkVolumeView
	decodeView(t, r.Body, "inventory", &vol)
	if r.Status != 200 || vol.VMInstance != vm {
		t.Fatalf("AttachDataVolumeToVm: %d %s", r.Status, r.Body)
	}
	var p sdkCreateVmBackup
	p.Params.RootVolumeUUID, p.Params.BackupStorageUUID, p.Params.Name = root, bs1, "vm"
	r = c.Job("POST", "/volumes/"+root+"/vm-backups", mustJSON(t, p), nil)
	var group []sdkVolumeBackupView
	decodeView(t, r.Body, "inventories", &group)
	if r.Status != 200 || len(group) != 2 || group[0].GroupUUID == "" || group[0].GroupUUID != group[1].GroupUUID || group[0].VMInstanceUUID != vm {
		t.Fatalf("CreateVmBackup: %d %s", r.Status, r.Body)
	}
	gid := group[0].GroupUUID
	r = c.Job("PUT", "/vm-backups/"+gid+"/actions", mustJSON(t, map[string]any{"syncVmBackupFromImageStoreBackupStorage": sdkCopy{UUID: gid, SrcBackupStorageUUID: bs1, DstBackupStorageUUID: bs2}}), nil)
	decodeView(t, r.Body, "inventories", &group)
	if r.Status != 200 || len(group) != 2 || len(group[0].BackupStorageRefs) != 2 {
		t.Fatalf("SyncVmBackupFromImageStoreBackupStorage: %d %s", r.Status, r.Body)
	}
	var one sdkVolumeBackupView
	r = c.Job("PUT", "/volume-backups/"+group[1].UUID+"/actions", mustJSON(t, map[string]any{"recoverBackupFromImageStoreBackupStorage": sdkCopy{UUID: group[1].UUID, SrcBackupStorageUUID: bs1, DstBackupStorageUUID: bs2}}), nil)
	decodeView(t, r.Body, "inventory", &one)
	if r.Status != 200 || one.UUID != group[1].UUID {
		t.Fatalf("RecoverBackupFromImageStoreBackupStorage: %d %s", r.Status, r.Body)
	}
	if r := c.Job("PUT", "/vm-backups/"+gid+"/actions", mustJSON(t, map[string]any{"revertVmFromVmBackup": map[string]string{"backupStorageUuid": bs2}}), nil); r.Status != 200 {
		t.Fatalf("RevertVmFromVmBackup: %d %s", r.Status, r.Body)
	}
	if r := c.Job("DELETE", "/vm-backups/"+gid+"?deleteMode=Permissive", "", nil); r.Status != 200 {
		t.Fatalf("DeleteVmBackup: %d %s", r.Status, r.Body)
	}
	if r := c.Job("DELETE", "/volumes/"+data+"/vm-instances?vmUuid="+vm, "", nil); r.Status != 200 {
		t.Fatalf("DetachDataVolumeFromVm: %d %s", r.Status, r.Body)
	}
}
