package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/volback/volback/chunkstore/storetest"
)

// targetEnv starts the NFS and S3 servers, and gives the daemons and CLI
// started by this test the S3 credentials through their environment.
func targetEnv(t *testing.T) (*storetest.Ganesha, *storetest.S3Server) {
	t.Helper()
	g := storetest.StartGanesha(t)
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "backups")
	t.Setenv("VOLBACK_S3_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("VOLBACK_S3_SECRET_ACCESS_KEY", srv.SecretKey)
	return g, srv
}

// setupVolume adds an ImageStore and a data volume of size bytes to d and
// returns the volume's NBD URI.
func setupVolume(t *testing.T, d *daemonProc, store, bs, vol string, size int64) string {
	t.Helper()
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", fmt.Sprintf(`{"params":{"name":"v","diskSize":%d,"resourceUuid":"%s"}}`, size, vol), nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", vol, filepath.Join(d.state, "nbd.sock"))
}

func backupBody(bs, name string, extra string, tags ...string) string {
	tj, _ := json.Marshal(tags)
	return `{"params":{"backupStorageUuid":"` + bs + `","name":"` + name + `"` + extra + `},"systemTags":` + string(tj) + `}`
}

// installRepo turns a ref's installPath (…/manifests/<id>[?options]) into the
// repository URL the CLI takes.
func installRepo(t *testing.T, inv map[string]any) string {
	t.Helper()
	return installRepoOn(t, inv, "")
}

// installRepoOn is installRepo for the copy on one backup storage ("" for
// the first copy).
func installRepoOn(t *testing.T, inv map[string]any, storage string) string {
	t.Helper()
	p := ""
	for _, ref := range inv["backupStorageRefs"].([]any) {
		ref := ref.(map[string]any)
		if storage == "" || ref["backupStorageUuid"] == storage {
			p = ref["installPath"].(string)
			break
		}
	}
	base, q, _ := strings.Cut(p, "?")
	i := strings.LastIndex(base, "/manifests/")
	if i < 0 {
		t.Fatalf("installPath %q", p)
	}
	if q != "" {
		q = "?" + q
	}
	return base[:i] + q
}

func metadata(t *testing.T, inv map[string]any) map[string]any {
	t.Helper()
	var md map[string]any
	if err := json.Unmarshal([]byte(inv["metadata"].(string)), &md); err != nil {
		t.Fatal(err)
	}
	return md
}

// restoreMatches restores backup id from repo with the CLI and compares it
// with the volume read over NBD.
func restoreMatches(t *testing.T, repo, id, uri string) {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "restored.raw")
	mustRun(t, "restore", "--repo", repo, id, out)
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	if !sameFiles(t, out, live) {
		t.Fatalf("backup %s restored from %s differs from the volume", id, repo)
	}
}

// TestDaemonTargets: CreateVolumeBackup with each fsInfo form writes a
// backup into NFS-Ganesha or versitygw; incrementals follow per target;
// the CLI restores each bit-identical from the installPath's repository.
func TestDaemonTargets(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	g, srv := targetEnv(t)
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 48<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 20M", "-c", "write -P 0x22 30M 3M", uri)

	targets := []struct{ name, tag, scheme string }{
		{"nfs", "fsInfo::type::nfs::url::" + g.URL("backups/vol") + "::options::" + g.Options() + ",rsize=65536,wsize=131072", "nfs://"},
		{"s3 endpoint url", "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/http-form", "s3://"},
		{"s3 url and options", "fsInfo::type::s3::url::s3://backups/s3-form/x::options::endpoint=" + srv.Endpoint + ",path-style,region=us-east-1", "s3://"},
	}
	for i, tc := range targets {
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "full-"+fmt.Sprint(i), "", tc.tag, "volumeLiveBackup::parallelismDegree::4"), nil)
		if r.status != 200 {
			t.Fatalf("%s: full backup: %d %s", tc.name, r.status, r.body)
		}
		inv := r.obj(t)["inventory"].(map[string]any)
		repo := installRepo(t, inv)
		if !strings.HasPrefix(repo, tc.scheme) || metadata(t, inv)["target"] == nil || metadata(t, inv)["mode"] != "full" {
			t.Fatalf("%s: inventory %v", tc.name, inv)
		}
		// One more change, then an incremental to the same target.
		tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x40+i, 8+4*i), uri)
		r = d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "incr-"+fmt.Sprint(i), "", tc.tag), nil)
		if r.status != 200 {
			t.Fatalf("%s: incremental backup: %d %s", tc.name, r.status, r.body)
		}
		inv2 := r.obj(t)["inventory"].(map[string]any)
		if md := metadata(t, inv2); md["mode"] != "incremental" || md["chunksRead"] != float64(1) || md["parent"] != inv["uuid"] {
			t.Errorf("%s: second backup %v", tc.name, md)
		}
		if installRepo(t, inv2) != repo {
			t.Errorf("%s: the two backups name different repositories: %s, %s", tc.name, repo, installRepo(t, inv2))
		}
		restoreMatches(t, repo, inv2["uuid"].(string), uri)
		mustRun(t, "verify", "--repo", repo)
		t.Logf("%s: %s", tc.name, repo)
	}
	// The NFS backups really are files on the server's export.
	if _, err := os.Stat(filepath.Join(g.Export, "backups/vol/config")); err != nil {
		t.Errorf("no repository on the NFS export: %v", err)
	}
	// A backup to an export that does not exist fails; it must not stop
	// the storage's collections.
	const noExport = "fsInfo::type::nfs::url::127.0.0.1:/no/such/export"
	if r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "unreachable", "", noExport), nil); r.status == 200 {
		t.Fatalf("backup to a missing export: %d %s", r.status, r.body)
	}
	// Delete every backup; the storage's reclaim reaches every target its
	// backups ever went to, and leaves no chunk anywhere.
	r := d.do("GET", "/volume-backups?fields=uuid", "OAuth "+d.session, "", nil)
	for _, x := range r.obj(t)["inventories"].([]any) {
		if r := d.job("DELETE", "/volume-backups/"+x.(map[string]any)["uuid"].(string), "", nil); r.status != 200 {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
	}
	r = d.job("PUT", "/backup-storage/image-store/"+bs+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil)
	if r.status != 200 || r.obj(t)["size"].(float64) <= 0 {
		t.Fatalf("reclaim: %d %s", r.status, r.body)
	}
	if sk, _ := r.obj(t)["skippedTargets"].([]any); len(sk) != 1 || !strings.Contains(fmt.Sprint(sk[0]), "/no/such/export") {
		t.Errorf("reclaim: skipped targets %v, want the missing export alone", sk)
	}
	if n := countChunkFiles(t, filepath.Join(g.Export, "backups/vol")); n != 0 {
		t.Errorf("%d chunks left on the NFS export", n)
	}
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String("backups")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			if strings.Contains(aws.ToString(o.Key), "/chunks/") {
				t.Errorf("chunk left in the bucket: %s", aws.ToString(o.Key))
			}
		}
	}
}

// TestTargetFaults: stopping the NFS or S3 server in the middle of a backup
// fails the job with an error naming the target; the frozen changes go
// back to the chain's map, so the backup after the server returns has
// them all and verifies.
func TestTargetFaults(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	g, srv := targetEnv(t)
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 32<<20)
	for i, tc := range []struct {
		name, tag, location string
		stop, start         func()
	}{
		{"nfs", "fsInfo::type::nfs::url::" + g.URL("faults") + "::options::" + g.Options(), fmt.Sprintf("nfs://127.0.0.1:%d%s", g.Port, filepath.Join(g.Export, "faults")),
			g.Stop, func() { g.Start(t) }},
		{"s3", "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/faults", "s3://backups/faults at " + srv.Endpoint,
			srv.Stop, func() { srv.Start(t) }},
	} {
		src := filepath.Join(dir, "src.raw")
		mustRun(t, "bench", "image", "--size", "32MiB", "--seed", fmt.Sprint(70+i), "--pattern", "r", src)
		tool(t, time.Minute, "nbdcopy", src, uri)
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "base", "", tc.tag), nil)
		if r.status != 200 {
			t.Fatalf("%s: first backup: %d %s", tc.name, r.status, r.body)
		}
		base := r.obj(t)["inventory"].(map[string]any)
		// Rewrite the volume with new random data, then back it up slowly
		// (4 MiB/s, about 8 s) and pull the server away after a second.
		mustRun(t, "bench", "image", "--size", "32MiB", "--seed", fmt.Sprint(80+i), "--pattern", "r", src)
		tool(t, time.Minute, "nbdcopy", src, uri)
		acc := d.do("POST", "/volumes/"+vol+"/volume-backups", "OAuth "+d.session, backupBody(bs, "doomed", `,"networkWriteBandwidth":4194304`, tc.tag), nil)
		if acc.status != 202 {
			t.Fatalf("%s: %d %s", tc.name, acc.status, acc.body)
		}
		// Pull the server away once the backup is writing to it.
		waitProgress(t, d, acc.obj(t)["location"].(string))
		tc.stop()
		failed := d.poll(acc.obj(t)["location"].(string))
		if failed.status != 503 || !strings.Contains(string(failed.body), tc.location) {
			t.Fatalf("%s: backup with the server gone: %d %s, want 503 naming %s", tc.name, failed.status, failed.body, tc.location)
		}
		t.Logf("%s: %s", tc.name, failed.body)
		if r := d.do("GET", "/volume-backups?q=name=doomed", "OAuth "+d.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 0 {
			t.Fatalf("%s: the failed backup is in the inventory: %s", tc.name, r.body)
		}
		tc.start()
		r = d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "after", "", tc.tag), nil)
		if r.status != 200 {
			t.Fatalf("%s: backup after the server returned: %d %s", tc.name, r.status, r.body)
		}
		inv := r.obj(t)["inventory"].(map[string]any)
		// Incremental from the last good backup, reading all 8 chunks
		// the failed one had frozen.
		if md := metadata(t, inv); md["mode"] != "incremental" || md["parent"] != base["uuid"] || md["chunksRead"] != float64(8) {
			t.Errorf("%s: backup after the failure: %v", tc.name, md)
		}
		restoreMatches(t, installRepo(t, inv), inv["uuid"].(string), uri)
		mustRun(t, "verify", "--repo", installRepo(t, inv))
	}
}

// getAbs GETs an absolute URL (a job's location) with the session.
func (d *daemonProc) getAbs(loc string) apiReply {
	d.t.Helper()
	return d.do("GET", loc, "OAuth "+d.session, "", nil)
}

// poll waits for an async job's end.
func (d *daemonProc) poll(loc string) apiReply {
	d.t.Helper()
	r := d.client().Wait(loc)
	return apiReply{r.Status, r.Body}
}

// recorder is a TCP proxy in front of a real server that notes the source
// address of every connection it accepts.
type recorder struct {
	ln    net.Listener
	mu    sync.Mutex
	peers map[string]int
}

func newRecorder(t *testing.T, to string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln, peers: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.peers[c.RemoteAddr().(*net.TCPAddr).IP.String()]++
			r.mu.Unlock()
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer s.Close()
				go func() { _, _ = io.Copy(s, c); s.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, s)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return r
}

func (r *recorder) port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for p := range r.peers {
		out = append(out, p)
	}
	sort.Strings(out)
	r.peers = map[string]int{}
	return out
}

// TestBackupNetwork: with backup::network::cidr, connections to NFS and S3
// targets leave from this host's address inside the CIDR (a second
// loopback address here), as the servers see them; without it, from the
// default one.
func TestBackupNetwork(t *testing.T) {
	requireRoot(t)
	requireTools(t, "ip", "qemu-io")
	g, srv := targetEnv(t)
	if out, err := exec.Command("ip", "addr", "add", "127.0.0.2/32", "dev", "lo").CombinedOutput(); err != nil && !strings.Contains(string(out), "exists") {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", "127.0.0.2/32", "dev", "lo").Run() })

	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 16<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x31 0 6M", uri)

	s3rec := newRecorder(t, strings.TrimPrefix(srv.Endpoint, "http://"))
	nfsRec := newRecorder(t, fmt.Sprintf("127.0.0.1:%d", g.Port))
	mntRec := newRecorder(t, fmt.Sprintf("127.0.0.1:%d", g.MountPort))
	tags := map[string]string{
		"s3":  fmt.Sprintf("fsInfo::type::s3::url::http://127.0.0.1:%d/backups/net", s3rec.port()),
		"nfs": fmt.Sprintf("fsInfo::type::nfs::url::%s::options::vers=3,port=%d,mountport=%d,timeo=20,retrans=2", g.URL("net"), nfsRec.port(), mntRec.port()),
	}
	for _, name := range []string{"nfs", "s3"} {
		for _, c := range []struct {
			cidr string
			want string
		}{{"127.0.0.2/32", "127.0.0.2"}, {"", "127.0.0.1"}} {
			ts := []string{tags[name]}
			if c.cidr != "" {
				ts = append(ts, "backup::network::cidr::"+c.cidr)
			}
			tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x44 8M 1M", uri)
			r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "net", "", ts...), nil)
			if r.status != 200 {
				t.Fatalf("%s cidr %q: %d %s", name, c.cidr, r.status, r.body)
			}
			md := metadata(t, r.obj(t)["inventory"].(map[string]any))
			seen := s3rec.take()
			if name == "nfs" {
				seen = append(nfsRec.take(), mntRec.take()...)
			}
			for _, p := range seen {
				if p != c.want {
					t.Errorf("%s with cidr %q: the server saw connections from %v, want only %s", name, c.cidr, seen, c.want)
					break
				}
			}
			if len(seen) == 0 {
				t.Errorf("%s: no connection went through the recorder", name)
			}
			if c.cidr != "" && md["sourceAddress"] != c.want {
				t.Errorf("%s: metadata sourceAddress %v, want %s", name, md["sourceAddress"], c.want)
			}
			t.Logf("%s cidr %q: server saw %v", name, c.cidr, seen)
		}
	}
}

// TestReimport: a repository written by one daemon is added to a fresh
// daemon on another state dir, which lists its backups after
// SyncVolumeBackup (the ImageStore's own and an S3 target's), restores
// them, and can delete them.
func TestReimport(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	_, srv := targetEnv(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	s3tag := "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/reimport"
	d1 := startDaemon(t, filepath.Join(dir, "state1"))
	uri := setupVolume(t, d1, store, bs, vol, 16<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x51 0 5M", uri)
	want := map[string]string{} // uuid -> name
	for i, tags := range [][]string{nil, nil, {s3tag}} {
		tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x60+i, 6+i), uri)
		r := d1.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, fmt.Sprintf("b%d", i), `,"description":"made by d1"`, tags...), nil)
		if r.status != 200 {
			t.Fatalf("backup %d: %d %s", i, r.status, r.body)
		}
		want[r.obj(t)["inventory"].(map[string]any)["uuid"].(string)] = fmt.Sprintf("b%d", i)
	}
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	d1.stop()

	d2 := startDaemon(t, filepath.Join(dir, "state2"))
	const bs2 = "2c4b0a3a24533c4faa9b156a0ef98fd0"
	if r := d2.job("POST", "/backup-storage/image-store", `{"params":{"name":"taken over","url":"`+store+`","resourceUuid":"`+bs2+`"}}`, nil); r.status != 200 {
		t.Fatalf("add the old repository: %d %s", r.status, r.body)
	}
	if r := d2.do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d2.session, "", nil); r.obj(t)["total"] != float64(0) {
		t.Fatalf("fresh daemon lists backups before the sync: %s", r.body)
	}
	sync := func(body string) []any {
		r := d2.job("PUT", "/volume-backups/imageStore/"+bs2+"/actions", body, nil)
		if r.status != 200 {
			t.Fatalf("SyncVolumeBackup %s: %d %s", body, r.status, r.body)
		}
		return r.obj(t)["inventories"].([]any)
	}
	if got := sync(`{"syncVolumeBackup":{}}`); len(got) != 2 {
		t.Fatalf("sync of the ImageStore added %d backups, want 2", len(got))
	}
	if got := sync(`{"syncVolumeBackup":{},"systemTags":["` + s3tag + `"]}`); len(got) != 1 {
		t.Fatalf("sync of the S3 target added %d backups, want 1", len(got))
	}
	if got := sync(`{"syncVolumeBackup":{}}`); len(got) != 0 {
		t.Fatalf("a second sync added %d backups, want 0", len(got))
	}
	r := d2.do("GET", "/volume-backups?q=volumeUuid="+vol+"&sort=+createDate", "OAuth "+d2.session, "", nil)
	invs := r.obj(t)["inventories"].([]any)
	if len(invs) != 3 {
		t.Fatalf("after the syncs: %s", r.body)
	}
	for _, x := range invs {
		inv := x.(map[string]any)
		if want[inv["uuid"].(string)] != inv["name"] || inv["description"] != "made by d1" || inv["status"] != "Ready" || inv["size"] != float64(16<<20) {
			t.Errorf("imported inventory %v", inv)
		}
	}
	last := invs[2].(map[string]any)
	out := filepath.Join(dir, "restored.raw")
	mustRun(t, "restore", "--repo", installRepo(t, last), last["uuid"].(string), out)
	if !sameFiles(t, out, live) {
		t.Fatal("backup imported from S3 restores to other data")
	}
	if r := d2.job("DELETE", "/volume-backups/"+last["uuid"].(string), "", nil); r.status != 200 {
		t.Fatalf("delete an imported backup: %d %s", r.status, r.body)
	}
	// ZStack answers an action it does not know with 400 and this text.
	if r := d2.job("PUT", "/volume-backups/imageStore/"+bs2+"/actions", `{"nope":{}}`, nil); r.status != 400 || !strings.HasPrefix(string(r.body), "the body doesn't contain action mapping") {
		t.Errorf("bad action: %d %s", r.status, r.body)
	}
}

// TestSharedS3Bucket: daemons on separate state dirs back up different
// volumes into one bucket prefix at the same time; they share the chunks
// the volumes have in common and lose nothing.
func TestSharedS3Bucket(t *testing.T) {
	requireTools(t, "nbdcopy", "qemu-io")
	_, srv := targetEnv(t)
	dir := t.TempDir()
	tag := "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/shared"
	common := filepath.Join(dir, "common.raw")
	mustRun(t, "bench", "image", "--size", "32MiB", "--seed", "90", "--pattern", "r", common)
	type node struct {
		d   *daemonProc
		uri string
		bs  string
		vol string
	}
	var nodes []node
	for i := 0; i < 3; i++ {
		bs := fmt.Sprintf("%031x%d", 0xa, i)
		vol := fmt.Sprintf("%031x%d", 0xb, i)
		d := startDaemon(t, filepath.Join(dir, fmt.Sprintf("state%d", i)))
		uri := setupVolume(t, d, filepath.Join(dir, fmt.Sprintf("store%d", i)), bs, vol, 32<<20)
		tool(t, time.Minute, "nbdcopy", common, uri)
		// Each volume differs from the others in its last 4 MiB.
		tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x 28M 4M", 0x70+i), uri)
		nodes = append(nodes, node{d, uri, bs, vol})
	}
	var wg sync.WaitGroup
	invs := make([]map[string]any, len(nodes))
	for i, n := range nodes {
		acc := n.d.do("POST", "/volumes/"+n.vol+"/volume-backups", "OAuth "+n.d.session, backupBody(n.bs, "shared", "", tag, "volumeLiveBackup::parallelismDegree::4"), nil)
		if acc.status != 202 {
			t.Fatalf("node %d: %d %s", i, acc.status, acc.body)
		}
		wg.Add(1)
		go func(i int, loc string) {
			defer wg.Done()
			r := nodes[i].d.poll(loc)
			if r.status != 200 {
				t.Errorf("node %d: %d %s", i, r.status, r.body)
				return
			}
			invs[i] = r.obj(t)["inventory"].(map[string]any)
		}(i, acc.obj(t)["location"].(string))
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// 7 common chunks + one of each volume's own: 10 objects, not 24.
	var chunks int
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String("backups"), Prefix: aws.String("shared/chunks/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		chunks += len(page.Contents)
	}
	if chunks != 7+len(nodes) {
		t.Errorf("%d chunks in the bucket, want %d (shared ones stored once)", chunks, 7+len(nodes))
	}
	repo := installRepo(t, invs[0])
	mustRun(t, "verify", "--repo", repo)
	for i, n := range nodes {
		restoreMatches(t, repo, invs[i]["uuid"].(string), n.uri)
	}
}

// waitProgress waits until a running job reports some progress.
func waitProgress(t *testing.T, d *daemonProc, loc string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; {
		p := d.getAbs(loc)
		if p.status != 202 {
			t.Fatalf("the job ended before it was interrupted: %d %s", p.status, p.body)
		}
		if prog, _ := p.obj(t)["progress"].(map[string]any); prog != nil && prog["done"].(float64) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the job made no progress within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCopiesToTargets: a backup in the local ImageStore copied to storages
// whose backups go to S3 and to NFS (their fsInfo tags) restores
// bit-identical from each copy, and the copy of a later backup sends only
// its new chunks.
func TestCopiesToTargets(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	g, srv := targetEnv(t)
	dir := t.TempDir()
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 32<<20)
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "32MiB", "--seed", "7", src)
	tool(t, time.Minute, "nbdcopy", src, uri)
	storages := map[string]string{
		"s3":  "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/offsite",
		"nfs": "fsInfo::type::nfs::url::" + g.URL("offsite") + "::options::" + g.Options(),
	}
	ids := map[string]string{"s3": "2c4b0a3a24533c4faa9b156a0ef98fd0", "nfs": "3c4b0a3a24533c4faa9b156a0ef98fd0"}
	for kind, tag := range storages {
		if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"`+kind+`","url":"`+filepath.Join(dir, kind)+`","resourceUuid":"`+ids[kind]+`"},"systemTags":["`+tag+`"]}`, nil); r.status != 200 {
			t.Fatalf("add the %s storage: %d %s", kind, r.status, r.body)
		}
	}
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "first", ""), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	first := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	live := filepath.Join(dir, "live.raw")
	tool(t, time.Minute, "nbdcopy", uri, live)
	// Then one chunk changes and a second backup follows.
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 9M 64k", uri)
	r = d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "second", ""), nil)
	if r.status != 200 {
		t.Fatalf("second backup: %d %s", r.status, r.body)
	}
	second := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	for kind, scheme := range map[string]string{"s3": "s3://", "nfs": "nfs://"} {
		sync := func(id string) (map[string]any, map[string]any) {
			t.Helper()
			r := d.job("PUT", "/volume-backups/"+id+"/actions", `{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"`+bs+`","dstBackupStorageUuid":"`+ids[kind]+`"}}`, nil)
			if r.status != 200 {
				t.Fatalf("%s: copy: %d %s", kind, r.status, r.body)
			}
			return r.obj(t)["inventory"].(map[string]any), r.obj(t)["copy"].(map[string]any)
		}
		inv, st := sync(first)
		repo := installRepoOn(t, inv, ids[kind])
		if !strings.HasPrefix(repo, scheme) || len(inv["backupStorageRefs"].([]any)) < 2 {
			t.Fatalf("%s: the copy is recorded at %s: %v", kind, repo, inv["backupStorageRefs"])
		}
		out := filepath.Join(dir, kind+".raw")
		mustRun(t, "restore", "--repo", repo, first, out)
		if !sameFiles(t, out, live) {
			t.Fatalf("%s: the copy restores to other data", kind)
		}
		_, st2 := sync(second)
		if st2["chunksSent"] != float64(1) {
			t.Errorf("%s: the second backup's copy sent %v chunks, want the 1 that changed (first copy: %v)", kind, st2["chunksSent"], st)
		}
		t.Logf("%s: first copy sent %v chunks (%v bytes); the second %v chunk (%v bytes)", kind, st["chunksSent"], st["bytesSent"], st2["chunksSent"], st2["bytesSent"])
		mustRun(t, "verify", "--repo", repo)
	}
}

// TestCopyKilledAndResumed: a throttled copy to S3 is cut by kill -9 of
// the daemon; after a restart the same copy completes, sending only the
// chunks the first attempt had not stored, and the copy restores.
func TestCopyKilledAndResumed(t *testing.T) {
	requireTools(t, "nbdcopy")
	_, srv := targetEnv(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	const bs, s3bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "2c4b0a3a24533c4faa9b156a0ef98fd0", "ec7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 32<<20)
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "32MiB", "--seed", "11", "--pattern", "r", src)
	tool(t, time.Minute, "nbdcopy", src, uri)
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s3","url":"`+filepath.Join(dir, "s3")+`","resourceUuid":"`+s3bs+`"},"systemTags":["fsInfo::type::s3::url::`+srv.Endpoint+`/backups/resume"]}`, nil); r.status != 200 {
		t.Fatalf("add the S3 storage: %d %s", r.status, r.body)
	}
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "b", ""), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	id := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	body := `{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"` + bs + `","dstBackupStorageUuid":"` + s3bs + `","networkWriteBandwidth":4194304}}`
	acc := d.do("PUT", "/volume-backups/"+id+"/actions", "OAuth "+d.session, body, nil)
	if acc.status != 202 {
		t.Fatalf("copy: %d %s", acc.status, acc.body)
	}
	// Kill once a few chunks have gone (32 MiB at 4 MiB/s takes ~8 s).
	for deadline := time.Now().Add(time.Minute); ; {
		p := d.getAbs(acc.obj(t)["location"].(string))
		if p.status != 202 {
			t.Fatalf("the throttled copy ended before the kill: %d %s", p.status, p.body)
		}
		if prog, _ := p.obj(t)["progress"].(map[string]any); prog != nil && prog["done"].(float64) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the copy made no progress")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	d2 := startDaemon(t, state)
	r = d2.job("PUT", "/volume-backups/"+id+"/actions", `{"syncBackupFromImageStoreBackupStorage":{"srcBackupStorageUuid":"`+bs+`","dstBackupStorageUuid":"`+s3bs+`"}}`, nil)
	if r.status != 200 {
		t.Fatalf("copy after the restart: %d %s", r.status, r.body)
	}
	st := r.obj(t)["copy"].(map[string]any)
	sent, present, chunks := st["chunksSent"].(float64), st["chunksPresent"].(float64), st["chunks"].(float64)
	if present < 2 || sent+present != chunks {
		t.Errorf("resumed copy sent %v and found %v of %v chunks: want the ones stored before the kill found, the rest sent", sent, present, chunks)
	}
	t.Logf("resumed copy: %v chunks found, %v sent, of %v", present, sent, chunks)
	inv := r.obj(t)["inventory"].(map[string]any)
	restoreMatches(t, installRepoOn(t, inv, s3bs), id, uri)
}

// TestStalledTargets: a target that accepts connections and then never
// answers (a TCP listener that reads nothing) fails the backup within the
// time its options allow (S3 timeout=, NFS timeo and retrans), with an
// error naming the target; the job ends and leaves no backup record.
func TestStalledTargets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never read
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	// Credentials, so the requests reach the stalled server.
	t.Setenv("AWS_ACCESS_KEY_ID", "stalled")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "stalled-secret")
	d := startDaemon(t, filepath.Join(dir, "state"))
	const bs, vol = "6b1d2f55e49c4c3fa02b8d4e3c7a9f01", "6b1d2f55e49c4c3fa02b8d4e3c7a9f02"
	setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 4<<20)
	for _, tc := range []struct{ name, tag, names string }{
		{"s3", fmt.Sprintf("fsInfo::type::s3::url::http://127.0.0.1:%d/stalled/x::options::timeout=1s", port), fmt.Sprintf("127.0.0.1:%d", port)},
		{"nfs", fmt.Sprintf("fsInfo::type::nfs::url::127.0.0.1:/stalled::options::port=%d,mountport=%d,timeo=10,retrans=1", port, port), "127.0.0.1"},
	} {
		start := time.Now()
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, "stalled-"+tc.name, "", tc.tag), nil)
		if r.status != 503 || !strings.Contains(string(r.body), tc.names) {
			t.Errorf("%s: backup to a stalled target: %d %s, want a failure naming it", tc.name, r.status, r.body)
		}
		t.Logf("%s: the backup failed after %s: %s", tc.name, time.Since(start).Round(time.Millisecond), r.body)
	}
	if r := d.do("GET", "/volume-backups", "OAuth "+d.session, "", nil); r.status != 200 || len(r.obj(t)["inventories"].([]any)) != 0 {
		t.Errorf("inventory after the stalled backups: %d %s", r.status, r.body)
	}
}

// TestTakenBackupID: two daemons share one ImageStore directory; the
// second backs up its own volume with resourceUuid = the first daemon's
// latest backup. It is refused before any data moves, the first daemon's
// backup is untouched, and its next incremental (built on that backup)
// restores bit-identical.
func TestTakenBackupID(t *testing.T) {
	requireTools(t, "nbdcopy", "qemu-io")
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	const bs = "7c2e3a66f5ad4d40b13c9e5f4d8b0a01"
	const vol1, vol2 = "7c2e3a66f5ad4d40b13c9e5f4d8b0a02", "7c2e3a66f5ad4d40b13c9e5f4d8b0a03"
	d1 := startDaemon(t, filepath.Join(dir, "state1"))
	uri1 := setupVolume(t, d1, store, bs, vol1, 16<<20)
	d2 := startDaemon(t, filepath.Join(dir, "state2"))
	uri2 := setupVolume(t, d2, store, bs, vol2, 16<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x31 0 16M", uri1)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x32 0 16M", uri2)

	r := d1.job("POST", "/volumes/"+vol1+"/volume-backups", backupBody(bs, "first", ""), nil)
	if r.status != 200 {
		t.Fatalf("first backup: %d %s", r.status, r.body)
	}
	first := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	manifest := filepath.Join(store, "manifests", first)
	before, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	chunks := countChunkFiles(t, store)

	r = d2.job("POST", "/volumes/"+vol2+"/volume-backups", backupBody(bs, "taken", `,"resourceUuid":"`+first+`"`), nil)
	if r.status == 200 || !strings.Contains(string(r.body), first) || !strings.Contains(string(r.body), "exists") {
		t.Fatalf("backup under a taken id: %d %s, want a refusal naming it", r.status, r.body)
	}
	if after, _ := os.ReadFile(manifest); !bytes.Equal(after, before) {
		t.Fatal("the first daemon's manifest changed")
	}
	if n := countChunkFiles(t, store); n != chunks {
		t.Errorf("%d chunk files after the refused backup, %d before: data moved", n, chunks)
	}
	if r := d2.do("GET", "/volume-backups", "OAuth "+d2.session, "", nil); len(r.obj(t)["inventories"].([]any)) != 0 {
		t.Errorf("the refused backup left a record: %s", r.body)
	}

	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x41 4M 1M", uri1)
	r = d1.job("POST", "/volumes/"+vol1+"/volume-backups", backupBody(bs, "next", ""), nil)
	if r.status != 200 {
		t.Fatalf("next backup: %d %s", r.status, r.body)
	}
	next := r.obj(t)["inventory"].(map[string]any)
	if md := metadata(t, next); md["mode"] != "incremental" || md["parent"] != first {
		t.Errorf("next backup: %v, want an incremental on %s", md, first)
	}
	restoreMatches(t, store, next["uuid"].(string), uri1)
	mustRun(t, "verify", "--repo", store)
}
