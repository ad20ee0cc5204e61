package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/volback/volback/bench/peer"
	"github.com/volback/volback/chunkstore/storetest"
)

// clusterVolume is one volume of TestClusterManyDaemons and what each of
// its backups must restore to.
type clusterVolume struct {
	host     int
	uuid     string
	uri      string
	expected map[string]string // backup uuid -> image file it must restore to
}

// TestClusterManyDaemons: four daemons (one per host), eight volumes, one
// bucket and prefix on a SeaweedFS cluster of three volume servers. The
// volumes share most of their data, which is stored once. A second round
// of backups runs while one volume server is killed and while the first
// daemon collects garbage in a loop: every backup completes, or fails
// with a clear error and completes when retried. Afterwards every daemon
// lists every backup after SyncVolumeBackup, each backup restores
// through a daemon that did not make it to the data it was taken from,
// and the repository verifies clean.
func TestClusterManyDaemons(t *testing.T) {
	requireTools(t, "nbdcopy")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c := storetest.StartSeaweedFS(t)
	ctx := context.Background()
	if err := c.NewBucket(ctx, "cluster"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VOLBACK_S3_ACCESS_KEY_ID", c.AccessKey)
	t.Setenv("VOLBACK_S3_SECRET_ACCESS_KEY", c.SecretKey)
	tag := "fsInfo::type::s3::url::" + c.Endpoint + "/cluster/hosts"
	dir := t.TempDir()
	const (
		hosts   = 4
		perHost = 2
		size    = 48 << 20
		chunk   = 4 << 20
	)
	// Every volume: 40 MiB in common, its own last 8 MiB.
	common := filepath.Join(dir, "common.raw")
	mustRun(t, "bench", "image", "--size", "48MiB", "--seed", "91", "--pattern", "r", common)
	base, err := os.ReadFile(common)
	if err != nil {
		t.Fatal(err)
	}
	image := func(name string, seed uint64, from, to int, img []byte) string {
		img = bytes.Clone(img)
		r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
		_, _ = r.Read(img[from:to])
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	daemons := make([]*daemonProc, hosts)
	storages := make([]string, hosts)
	var vols []*clusterVolume
	for h := range hosts {
		storages[h] = fmt.Sprintf("%031x%d", 0xc, h)
		daemons[h] = startDaemon(t, filepath.Join(dir, fmt.Sprintf("state%d", h)))
		d := daemons[h]
		if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"local","url":"`+filepath.Join(dir, fmt.Sprintf("store%d", h))+`","resourceUuid":"`+storages[h]+`"}}`, nil); r.status != 200 {
			t.Fatalf("host %d: add storage: %d %s", h, r.status, r.body)
		}
		for j := range perHost {
			v := &clusterVolume{host: h, uuid: fmt.Sprintf("%030x%d%d", 0xd, h, j), expected: map[string]string{}}
			if r := d.job("POST", "/volumes/data", fmt.Sprintf(`{"params":{"name":"v%d%d","diskSize":%d,"resourceUuid":"%s"}}`, h, j, size, v.uuid), nil); r.status != 200 {
				t.Fatalf("host %d: create volume: %d %s", h, r.status, r.body)
			}
			v.uri = fmt.Sprintf("nbd+unix:///%s?socket=%s", v.uuid, filepath.Join(d.state, "nbd.sock"))
			vols = append(vols, v)
		}
	}
	// write puts an image on a volume and returns it.
	write := func(v *clusterVolume, img string) string {
		tool(t, time.Minute, "nbdcopy", img, v.uri)
		return img
	}
	// backup starts a backup of v on its host; the result is the job's
	// location.
	backup := func(v *clusterVolume, name string, extra string) string {
		d := daemons[v.host]
		acc := d.do("POST", "/volumes/"+v.uuid+"/volume-backups", "OAuth "+d.session, backupBody(storages[v.host], name, extra, tag, "volumeLiveBackup::parallelismDegree::4"), nil)
		if acc.status != 202 {
			t.Fatalf("backup of %s: %d %s", v.uuid, acc.status, acc.body)
		}
		return acc.obj(t)["location"].(string)
	}
	type outcome struct {
		inv map[string]any
		err string
	}
	// runAll backs up every volume at once; during is called once they run.
	runAll := func(name, extra string, during func()) []outcome {
		locs := make([]string, len(vols))
		for i, v := range vols {
			locs[i] = backup(v, name, extra)
		}
		if during != nil {
			during()
		}
		out := make([]outcome, len(vols))
		for i, v := range vols {
			r := daemons[v.host].poll(locs[i])
			if r.status == 200 {
				out[i].inv = r.obj(t)["inventory"].(map[string]any)
			} else {
				out[i].err = string(r.body)
			}
		}
		return out
	}

	// Round one: eight full backups at once.
	imagesA := make([]string, len(vols))
	for i, v := range vols {
		imagesA[i] = write(v, image(fmt.Sprintf("a%d.raw", i), uint64(100+i), 40<<20, size, base))
	}
	started := time.Now()
	roundA := runAll("a", "", nil)
	written := 0
	for i, o := range roundA {
		if o.inv == nil {
			t.Fatalf("round one, volume %d: %s", i, o.err)
		}
		vols[i].expected[o.inv["uuid"].(string)] = imagesA[i]
		written += int(metadata(t, o.inv)["chunksNew"].(float64))
	}
	objects := countObjects(t, c, "hosts/chunks/")
	// 10 chunks in common, 2 of each volume's own.
	if want := 10 + 2*len(vols); objects != want {
		t.Errorf("%d chunk objects in the bucket, want %d (shared chunks once)", objects, want)
	}
	t.Logf("round one: 8 volumes (%d MiB, %d chunks) by 4 daemons in %v: %d chunk objects stored, %d chunk writes reported by the daemons",
		len(vols)*size>>20, len(vols)*size/chunk, time.Since(started).Round(time.Millisecond), objects, written)

	// Round two: 16 MiB of each volume changes; the incrementals run at
	// 8 MiB/s each while a volume server dies and garbage is collected.
	imagesB := make([]string, len(vols))
	for i, v := range vols {
		a, err := os.ReadFile(imagesA[i])
		if err != nil {
			t.Fatal(err)
		}
		imagesB[i] = write(v, image(fmt.Sprintf("b%d.raw", i), uint64(200+i), 8<<20, 24<<20, a))
	}
	var gcs struct {
		sync.Mutex
		done, withdrew int
	}
	stopGC := make(chan struct{})
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for first := true; ; first = false {
			// The first collection starts with the backups, so that some
			// of them find it running and wait for it.
			if !first {
				select {
				case <-stopGC:
					return
				case <-time.After(150 * time.Millisecond):
				}
			}
			r := daemons[0].client().Job("PUT", "/backup-storage/image-store/"+storages[0]+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil)
			if r.Status != 200 {
				t.Errorf("reclaim space beside backups: %d %s", r.Status, r.Body)
				return
			}
			skipped, _ := r.JSON(t)["skippedTargets"].([]any)
			gcs.Lock()
			if len(skipped) > 0 { // the S3 target had backups running
				gcs.withdrew++
			} else {
				gcs.done++
			}
			gcs.Unlock()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	startedB := time.Now()
	var killedAfter time.Duration
	roundB := runAll("b", `,"volumeReadBandwidth":8388608`, func() {
		time.Sleep(700 * time.Millisecond)
		c.KillVolumeServer(1)
		killedAfter = time.Since(startedB)
	})
	retried := 0
	for i, o := range roundB {
		for attempt := 0; o.inv == nil; attempt++ {
			if attempt == 3 {
				t.Fatalf("volume %d: the backup still fails after 3 retries: %s", i, o.err)
			}
			t.Logf("volume %d: backup failed with the volume server down (retried): %s", i, o.err)
			retried++
			time.Sleep(time.Second)
			r := daemons[vols[i].host].poll(backup(vols[i], "b", ""))
			o = outcome{}
			if r.status == 200 {
				o.inv = r.obj(t)["inventory"].(map[string]any)
			} else {
				o.err = string(r.body)
			}
		}
		roundB[i] = o
		vols[i].expected[o.inv["uuid"].(string)] = imagesB[i]
		if md := metadata(t, o.inv); md["mode"] != "incremental" {
			t.Errorf("volume %d: round two was %v (%v), want incremental", i, md["mode"], md["fullReason"])
		}
	}
	close(stopGC)
	<-gcDone
	t.Logf("round two: volume server killed %v after the backups started; %d backups retried; collections beside them: %d ran, %d withdrew",
		killedAfter.Round(time.Millisecond), retried, gcs.done, gcs.withdrew)
	if err := c.StartVolumeServer(ctx, 1); err != nil {
		t.Fatal(err)
	}

	// Host 0 deletes its second-round backups: the chunks they alone
	// hold (8-24 MiB of its two volumes) become garbage, and a collection
	// with no backup running takes them and nothing else.
	for _, o := range roundB[:perHost] {
		id := o.inv["uuid"].(string)
		if r := daemons[0].job("DELETE", "/volume-backups/"+id, "", nil); r.status != 200 {
			t.Fatalf("delete %s: %d %s", id, r.status, r.body)
		}
		for _, v := range vols[:perHost] {
			delete(v.expected, id)
		}
	}
	r := daemons[0].job("PUT", "/backup-storage/image-store/"+storages[0]+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil)
	if skipped, _ := r.obj(t)["skippedTargets"].([]any); r.status != 200 || len(skipped) > 0 {
		t.Fatalf("reclaim space: %d %s", r.status, r.body)
	}
	// Round one's 26 and round two's 4 new chunks of each volume, less
	// host 0's: also every chunk a failed attempt left is gone.
	if got, want := countObjects(t, c, "hosts/chunks/"), objects+4*(len(vols)-perHost); got != want {
		t.Errorf("%d chunk objects after the collection, want %d", got, want)
	}

	// Every daemon sees every backup, and restores one made elsewhere.
	total := 0
	for _, v := range vols {
		total += len(v.expected)
	}
	for h, d := range daemons {
		rs := d.job("PUT", "/volume-backups/imageStore/"+storages[h]+"/actions", `{"syncVolumeBackup":{},"systemTags":["`+tag+`"]}`, nil)
		if rs.status != 200 {
			t.Fatalf("host %d: SyncVolumeBackup: %d %s", h, rs.status, rs.body)
		}
		q := d.do("GET", "/volume-backups?q=status=Ready&replyWithCount=true", "OAuth "+d.session, "", nil)
		if got := q.obj(t)["total"]; got != float64(total) {
			t.Errorf("host %d lists %v Ready backups after the sync, want %d", h, got, total)
		}
	}
	n := 0
	for _, v := range vols {
		for id, img := range v.expected {
			h := (v.host + 1 + n%(hosts-1)) % hosts // never the daemon that made it
			n++
			d := daemons[h]
			nv := fmt.Sprintf("%030x%02d", 0xe, n)
			rr := d.job("POST", "/volumes/data-volume/from/volume-template/"+id, `{"params":{"name":"restored","resourceUuid":"`+nv+`"}}`, nil)
			if rr.status != 200 {
				t.Fatalf("host %d: restore backup %s of host %d: %d %s", h, id, v.host, rr.status, rr.body)
			}
			out := filepath.Join(dir, "restored-"+nv+".raw")
			tool(t, time.Minute, "nbdcopy", fmt.Sprintf("nbd+unix:///%s?socket=%s", nv, filepath.Join(d.state, "nbd.sock")), out)
			if !sameFiles(t, out, img) {
				t.Errorf("backup %s of host %d restored by host %d differs from the volume it was taken of", id, v.host, h)
			}
			os.Remove(out)
		}
	}
	repo := installRepo(t, roundB[0].inv)
	vr := mustRun(t, "verify", "--repo", repo)
	t.Logf("verify after the volume server returned: %s", strings.TrimSpace(vr.stdout+vr.stderr))
}

// countObjects counts a bucket's objects under a prefix.
func countObjects(t *testing.T, c *peer.SeaweedFS, prefix string) int {
	t.Helper()
	n := 0
	p := s3.NewListObjectsV2Paginator(c.Client(), &s3.ListObjectsV2Input{Bucket: aws.String("cluster"), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Contents)
	}
	return n
}
