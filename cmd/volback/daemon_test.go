package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volback/volback/control/apitest"
)

type daemonProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	state   string
	base    string // http://host:port/zstack/v1
	session string
	logPath string
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startDaemon(t testing.TB, state string, extra ...string) *daemonProc {
	t.Helper()
	addr := freePort(t)
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, _ := os.Create(logPath)
	cmd := exec.Command(volbackBin, append([]string{"daemon", "--state-dir", state, "--listen", addr}, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{t: t, cmd: cmd, state: state, base: "http://" + addr + "/zstack/v1", logPath: logPath}
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 500 {
			cmd.Process.Kill()
			b, _ := os.ReadFile(logPath)
			t.Fatalf("daemon did not start:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	})
	c := d.client()
	c.Login("password")
	d.session = c.Session
	return d
}

func (d *daemonProc) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		b, _ := os.ReadFile(d.logPath)
		d.t.Errorf("daemon exited with %v:\n%s", err, b)
	}
}

type apiReply struct {
	status int
	body   []byte
}

func (r apiReply) obj(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("reply %q: %v", r.body, err)
	}
	return m
}

func (d *daemonProc) client() *apitest.Client {
	return &apitest.Client{T: d.t, Base: d.base, Session: d.session}
}

func (d *daemonProc) do(method, path, auth, body string, headers map[string]string) apiReply {
	d.t.Helper()
	r := d.client().Do(method, path, auth, body, headers)
	return apiReply{r.Status, r.Body}
}

// job posts an async API and polls its location until it ends.
func (d *daemonProc) job(method, path, body string, headers map[string]string) apiReply {
	d.t.Helper()
	r := d.client().Job(method, path, body, headers)
	return apiReply{r.Status, r.Body}
}

// waitConnections waits until the daemon counts n NBD connections (its
// metrics say so), the event a test of attached clients waits for.
func (d *daemonProc) waitConnections(n int) {
	d.t.Helper()
	want := fmt.Sprintf("volback_nbd_connections %d\n", n)
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(strings.TrimSuffix(d.base, "/zstack/v1") + "/metrics")
		if err != nil {
			d.t.Fatal(err)
		}
		mb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(mb), want) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the daemon never counted %d NBD connections", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func zcode(t *testing.T, r apiReply) string {
	t.Helper()
	e, _ := r.obj(t)["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// TestDaemonFlow drives the whole flow over real HTTP and a real NBD
// connection: log in, add an ImageStore, create a volume, write to it over
// NBD, back it up with the seed page's request as written, poll, query,
// back up again (incremental), restore with the CLI, delete.
func TestDaemonFlow(t *testing.T) {
	requireTools(t, "qemu-io")
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	store := filepath.Join(dir, "store")
	const bsUUID, volUUID = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"

	r := d.job("POST", "/backup-storage/image-store", fmt.Sprintf(`{"params":{"name":"store","url":"%s","resourceUuid":"%s"}}`, store, bsUUID), nil)
	if r.status != 200 || r.obj(t)["inventory"].(map[string]any)["uuid"] != bsUUID {
		t.Fatalf("AddImageStoreBackupStorage: %d %s", r.status, r.body)
	}
	r = d.job("POST", "/volumes/data", fmt.Sprintf(`{"params":{"name":"data","diskSize":6.7108864E7,"resourceUuid":"%s"}}`, volUUID), nil)
	if r.status != 200 {
		t.Fatalf("CreateDataVolume: %d %s", r.status, r.body)
	}
	uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", volUUID, filepath.Join(d.state, "nbd.sock"))
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0x33 40M 1M", uri)

	// The seed's curl sample, as written (host and port aside).
	seed := `{"params":{"backupStorageUuid":"1c4b0a3a24533c4faa9b156a0ef98fdf","name":"backup-1","description":"a critical volume backup"}}`
	r = d.job("POST", "/volumes/"+volUUID+"/volume-backups", seed, nil)
	if r.status != 200 {
		t.Fatalf("CreateVolumeBackup: %d %s", r.status, r.body)
	}
	inv := r.obj(t)["inventory"].(map[string]any)
	for _, f := range []string{"uuid", "volumeUuid", "name", "description", "type", "state", "status", "size", "metadata", "mode", "createDate", "lastOpDate", "backupStorageRefs"} {
		if _, ok := inv[f]; !ok {
			t.Errorf("inventory lacks %s: %s", f, r.body)
		}
	}
	if inv["status"] != "Ready" || inv["size"] != float64(64<<20) || inv["volumeUuid"] != volUUID {
		t.Fatalf("inventory: %s", r.body)
	}
	if _, err := time.Parse("Jan 2, 2006 3:04:05 PM", inv["createDate"].(string)); err != nil {
		t.Errorf("createDate %q is not in Gson's format: %v", inv["createDate"], err)
	}
	var md map[string]any
	if err := json.Unmarshal([]byte(inv["metadata"].(string)), &md); err != nil || md["mode"] != "full" || md["fullReason"] == nil {
		t.Errorf("metadata %q: %v", inv["metadata"], err)
	}
	refs := inv["backupStorageRefs"].([]any)
	ref := refs[0].(map[string]any)
	if ref["backupStorageUuid"] != bsUUID || !strings.HasPrefix(ref["installPath"].(string), store) {
		t.Errorf("backupStorageRefs: %v", refs)
	}
	id := inv["uuid"].(string)

	for _, q := range []string{"q=name=backup-1", "q=volumeUuid=" + volUUID} {
		r := d.do("GET", "/volume-backups?"+q, "OAuth "+d.session, "", nil)
		invs, _ := r.obj(t)["inventories"].([]any)
		if r.status != 200 || len(invs) != 1 || invs[0].(map[string]any)["uuid"] != id {
			t.Errorf("QueryVolumeBackup %s: %d %s", q, r.status, r.body)
		}
	}
	if r := d.do("GET", "/volume-backups/"+id, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 1 {
		t.Errorf("GET /volume-backups/{uuid}: %s", r.body)
	}

	// Change 1 MiB, back up again: incremental, reads one chunk.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x77 20M 1M", uri)
	r = d.job("POST", "/volumes/"+volUUID+"/volume-backups", `{"params":{"backupStorageUuid":"`+bsUUID+`","name":"backup-2"},"userTags":["owner::ops","tier::gold"]}`, nil)
	if r.status != 200 {
		t.Fatalf("second backup: %d %s", r.status, r.body)
	}
	inv2 := r.obj(t)["inventory"].(map[string]any)
	json.Unmarshal([]byte(inv2["metadata"].(string)), &md)
	if md["mode"] != "incremental" || md["chunksRead"] != float64(1) || md["parent"] != id {
		t.Errorf("second backup metadata: %s", inv2["metadata"])
	}

	// The storage's url is a repository the CLI restores from as it is.
	out := filepath.Join(dir, "restored.raw")
	mustRun(t, "restore", "--repo", store, inv2["uuid"].(string), out)
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	if !sameFiles(t, out, live) {
		t.Fatal("restored backup differs from the volume read over NBD")
	}

	// Prometheus metrics count the two backups and the NBD traffic.
	resp, err := http.Get(strings.TrimSuffix(d.base, "/zstack/v1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`volback_backups_total{mode="full",result="success"} 1`, `volback_backups_total{mode="incremental",result="success"} 1`,
		"volback_nbd_requests_total", "volback_backup_duration_seconds_count 2"} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// The userTags are kept, each a resource of its own (QueryUserTag).
	id2 := inv2["uuid"].(string)
	r = d.do("GET", "/user-tags?q=resourceUuid="+id2+"&sort=+tag", "OAuth "+d.session, "", nil)
	if tags, _ := r.obj(t)["inventories"].([]any); r.status != 200 || len(tags) != 2 || tags[0].(map[string]any)["tag"] != "owner::ops" ||
		tags[1].(map[string]any)["resourceType"] != "VolumeBackupVO" || tags[1].(map[string]any)["type"] != "User" {
		t.Errorf("QueryUserTag: %d %s", r.status, r.body)
	}

	reclaim := func() map[string]any {
		t.Helper()
		r := d.job("PUT", "/backup-storage/image-store/"+bsUUID+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil)
		if r.status != 200 {
			t.Fatalf("ReclaimSpaceFromImageStore: %d %s", r.status, r.body)
		}
		return r.obj(t)["gc"].(map[string]any)
	}
	r = d.job("DELETE", "/volume-backups/"+id, "", nil)
	if r.status != 200 {
		t.Fatalf("DeleteVolumeBackup: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volume-backups?q=uuid="+id, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 0 {
		t.Errorf("deleted backup still listed: %s", r.body)
	}
	if _, err := os.Stat(filepath.Join(store, "manifests", id)); !os.IsNotExist(err) {
		t.Errorf("deleted backup's manifest still in the repository")
	}
	// Every chunk of backup-1 is also backup-2's: the collection keeps all.
	if gc := reclaim(); gc["chunksDeleted"] != float64(0) || gc["chunksInUse"] != float64(3) {
		t.Errorf("reclaim with every chunk in use: %v", gc)
	}
	mustRun(t, "verify", "--repo", store)
	// With backup-2 gone too, its three chunks are garbage: a dry run
	// from the CLI counts them, the API's collection deletes them, and
	// its user tags go with it.
	if r := d.job("DELETE", "/volume-backups/"+id2, "", nil); r.status != 200 {
		t.Fatalf("DeleteVolumeBackup: %d %s", r.status, r.body)
	}
	var dry struct{ ChunksDeleted, ChunksTotal int }
	if err := json.Unmarshal([]byte(mustRun(t, "--json", "gc", "--dry-run", "--repo", store).stdout), &dry); err != nil || dry.ChunksDeleted != 3 || dry.ChunksTotal != 3 {
		t.Errorf("gc --dry-run: %+v %v", dry, err)
	}
	if gc := reclaim(); gc["chunksDeleted"] != float64(3) || gc["bytesDeleted"].(float64) <= 0 {
		t.Errorf("reclaim after deleting every backup: %v", gc)
	}
	if n := countChunkFiles(t, store); n != 0 {
		t.Errorf("%d chunk files left after the collection", n)
	}
	if r := d.do("GET", "/user-tags?q=resourceUuid="+id2, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 0 {
		t.Errorf("user tags of a deleted backup still listed: %s", r.body)
	}

	// A volume with an NBD client attached cannot be deleted.
	requirePythonNBD(t)
	{
		// Once the client's handshake returns the volume counts as
		// attached: no waiting for the daemon's metrics.
		release := holdNBD(t, uri)
		if r := d.do("DELETE", "/volumes/"+volUUID, "OAuth "+d.session, "", nil); r.status != 503 || zcode(t, r) != "SYS.1006" {
			t.Fatalf("delete of an attached volume: %d %s, want 503 SYS.1006", r.status, r.body)
		}
		release()
		// The client has gone when its process has; the daemon sees
		// its socket close a moment later.
		d.waitConnections(0)
	}
	if r := d.job("DELETE", "/volumes/"+volUUID, "", nil); r.status != 200 {
		t.Fatalf("DeleteDataVolume: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volumes/"+volUUID, "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 0 {
		t.Errorf("deleted volume still listed: %s", r.body)
	}
	if _, err := os.Stat(filepath.Join(d.state, "volumes", volUUID+".raw")); !os.IsNotExist(err) {
		t.Errorf("deleted volume's file is still there")
	}
	// Deleting the storage drops its backups from the inventory but
	// leaves the repository on disk.
	if r := d.job("DELETE", "/backup-storage/"+bsUUID, "", nil); r.status != 200 {
		t.Fatalf("DeleteBackupStorage: %d %s", r.status, r.body)
	}
	if r := d.do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d.session, "", nil); r.obj(t)["total"] != float64(0) {
		t.Errorf("backups of a deleted storage still listed: %s", r.body)
	}
	if _, err := os.Stat(filepath.Join(store, "config")); err != nil {
		t.Errorf("deleting the storage removed its repository: %v", err)
	}
}

// TestDaemonKilledMidBackup: kill -9 of the daemon during a backup, then a
// restart. The job reads failed, no half-made backup is in the inventory,
// the volume's data is intact, and the next backup of the chain is full.
func TestDaemonKilledMidBackup(t *testing.T) {
	requireTools(t, "nbdcopy")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	store := filepath.Join(dir, "store")
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"v","diskSize":1073741824,"resourceUuid":"`+vol+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	// A first backup makes the chain, so the one killed is not its first.
	if r := d.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"first"}}`, nil); r.status != 200 {
		t.Fatalf("first backup: %d %s", r.status, r.body)
	}
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "1GiB", "--seed", "5", "--pattern", "r", src)
	uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", vol, filepath.Join(state, "nbd.sock"))
	tool(t, time.Minute, "nbdcopy", src, uri)

	r := d.do("POST", "/volumes/"+vol+"/volume-backups", "OAuth "+d.session,
		`{"params":{"backupStorageUuid":"`+bs+`","name":"doomed"},"systemTags":["volumeLiveBackup::parallelismDegree::1"]}`, nil)
	if r.status != 202 {
		t.Fatalf("start backup: %d %s", r.status, r.body)
	}
	loc := r.obj(t)["location"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if tmp, _ := filepath.Glob(filepath.Join(store, "chunks", "*", ".tmp-*")); len(tmp) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backup wrote nothing within 30 s")
		}
		time.Sleep(time.Millisecond)
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()

	d2 := startDaemon(t, state)
	jobID := loc[strings.LastIndex(loc, "/")+1:]
	if r := d2.do("GET", "/api-jobs/"+jobID, "OAuth "+d2.session, "", nil); r.status != 503 || zcode(t, r) != "SYS.1006" {
		t.Errorf("job after the kill: %d %s, want 503 SYS.1006", r.status, r.body)
	}
	if r := d2.do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d2.session, "", nil); r.obj(t)["total"] != float64(1) || bytes.Contains(r.body, []byte("doomed")) {
		t.Errorf("inventory after the kill: %s, want only the first backup", r.body)
	}
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	if !sameFiles(t, src, live) {
		t.Fatal("the volume's data changed across the kill")
	}
	r = d2.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"after"}}`, nil)
	if r.status != 200 {
		t.Fatalf("backup after the kill: %d %s", r.status, r.body)
	}
	var md map[string]any
	json.Unmarshal([]byte(r.obj(t)["inventory"].(map[string]any)["metadata"].(string)), &md)
	if md["mode"] != "full" || !strings.Contains(fmt.Sprint(md["fullReason"]), "not closed cleanly") {
		t.Errorf("backup after the kill: metadata %v, want a full read because of the unclean stop", md)
	}
	t.Logf("after kill -9: %v", md["fullReason"])
	mustRun(t, "verify", "--repo", store)
}

// TestSeedCurlSample sends the API page's curl sample as written (host,
// port and session aside) with the real curl, then polls the job's
// location with plain curl and no Authorization header.
func TestSeedCurlSample(t *testing.T) {
	requireTools(t, "curl")
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+filepath.Join(dir, "store")+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"v","diskSize":16777216,"resourceUuid":"`+vol+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	host := strings.TrimSuffix(strings.TrimPrefix(d.base, "http://"), "/zstack/v1")
	out, err := exec.Command("curl", "-s", "-w", "\n%{http_code}",
		"-H", "Content-Type: application/json;charset=UTF-8",
		"-H", "Authorization: OAuth "+d.session,
		"-X", "POST", "-d", `{"params":{"backupStorageUuid":"1c4b0a3a24533c4faa9b156a0ef98fdf","name":"backup-1","description":"a critical volume backup"}}`,
		"http://"+host+"/zstack/v1/volumes/ec7196ba2d993236aceddd9b31f5d19b/volume-backups").Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if lines[len(lines)-1] != "202" {
		t.Fatalf("curl sample: %s", out)
	}
	var loc struct {
		Location string `json:"location"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &loc); err != nil || !strings.Contains(loc.Location, "/zstack/v1/api-jobs/") {
		t.Fatalf("curl sample body %q: %v", lines[0], err)
	}
	// The location is polled as a plain curl would: no Authorization.
	for i := 0; ; i++ {
		out, err := exec.Command("curl", "-s", "-w", "\n%{http_code}", loc.Location).Output()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if code := lines[len(lines)-1]; code == "200" {
			if !strings.Contains(lines[0], `"name":"backup-1"`) || !strings.Contains(lines[0], `"status":"Ready"`) {
				t.Fatalf("polled result: %s", lines[0])
			}
			break
		} else if code != "202" || i > 500 {
			t.Fatalf("polling: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, q := range []string{"q=name=backup-1", "q=volumeUuid=" + vol} {
		r := d.do("GET", "/volume-backups?"+q, "OAuth "+d.session, "", nil)
		if invs := r.obj(t)["inventories"].([]any); len(invs) != 1 {
			t.Errorf("QueryVolumeBackup %s: %s", q, r.body)
		}
	}
}

// TestDaemonBackupFailsMidway: the storage fills up (a small tmpfs) in the
// middle of a backup. The job fails with 503 and the cause, no inventory is
// left in Creating, and the next backup still reads every change.
func TestDaemonBackupFailsMidway(t *testing.T) {
	requireRoot(t)
	requireTools(t, "nbdcopy", "mount", "umount")
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.MkdirAll(small, 0o755)
	run0(t, "mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", small)
	defer exec.Command("umount", small).Run()

	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"small","url":"`+small+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"v","diskSize":67108864,"resourceUuid":"`+vol+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "64MiB", "--seed", "50", "--pattern", "r", src)
	uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", vol, filepath.Join(d.state, "nbd.sock"))
	tool(t, time.Minute, "nbdcopy", src, uri)

	r := d.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"too-big"}}`, nil)
	if r.status != 503 || zcode(t, r) != "SYS.1006" {
		t.Fatalf("backup into a full storage: %d %s, want 503 SYS.1006", r.status, r.body)
	}
	if !strings.Contains(string(r.body), "no space left") || !strings.Contains(string(r.body), "cause") {
		t.Errorf("the error does not carry the cause: %s", r.body)
	}
	if l := d.do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d.session, "", nil); l.obj(t)["total"] != float64(0) {
		t.Errorf("inventory after the failure: %s", l.body)
	}
	// A roomy storage takes the next backup of the volume whole.
	const bs2 = "2c4b0a3a24533c4faa9b156a0ef98fdf"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"big","url":"`+filepath.Join(dir, "big")+`","resourceUuid":"`+bs2+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	r = d.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs2+`","name":"fits"}}`, nil)
	if r.status != 200 {
		t.Fatalf("backup into a roomy storage: %d %s", r.status, r.body)
	}
	out := filepath.Join(dir, "out.raw")
	mustRun(t, "restore", "--repo", filepath.Join(dir, "big"), r.obj(t)["inventory"].(map[string]any)["uuid"].(string), out)
	if !sameFiles(t, src, out) {
		t.Fatal("restored backup differs from the volume")
	}
}

func countChunkFiles(t *testing.T, repo string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(repo, "chunks"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDaemonVmBackup: volumes registered as a VM's (--volume
// UUID=PATH,type=...,vm=...) are backed up together by CreateVmBackup,
// through the binary and NBD; each restores to its volume as it was.
func TestDaemonVmBackup(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	const root, data, vm = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	paths := map[string]string{root: filepath.Join(dir, "root.raw"), data: filepath.Join(dir, "data.raw")}
	for _, p := range paths {
		if err := os.WriteFile(p, make([]byte, 8<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, filepath.Join(dir, "state"),
		"--volume", root+"="+paths[root]+",type=Root,vm="+vm, "--volume", data+"="+paths[data]+",type=Data,vm="+vm)
	const bs = "1c4b0a3a24533c4faa9b156a0ef98fdf"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+filepath.Join(dir, "store")+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	uri := func(id string) string {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", id, filepath.Join(d.state, "nbd.sock"))
	}
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 3M", uri(root))
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 5M", uri(data))
	r := d.job("POST", "/volumes/"+root+"/vm-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"vm"}}`, nil)
	if r.status != 200 {
		t.Fatalf("CreateVmBackup: %d %s", r.status, r.body)
	}
	invs := r.obj(t)["inventories"].([]any)
	if len(invs) != 2 {
		t.Fatalf("%d backups in the VM backup, want 2: %s", len(invs), r.body)
	}
	for _, inv := range invs {
		inv := inv.(map[string]any)
		if inv["groupUuid"] != invs[0].(map[string]any)["groupUuid"] || inv["vmInstanceUuid"] != vm {
			t.Errorf("member %v", inv)
		}
		restoreMatches(t, installRepo(t, inv), inv["uuid"].(string), uri(inv["volumeUuid"].(string)))
	}
}
