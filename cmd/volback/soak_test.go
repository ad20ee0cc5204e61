package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
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

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/storetest"
)

// TestSoak: two daemons back up their own volumes into one repository (a
// local directory, then an S3 bucket prefix) for 20 rounds, each round a
// few random writes (the same on both volumes, so both backups store the
// same chunks at once), then a backup on each daemon and a garbage
// collection from each, all at once (the collections asked first in odd
// rounds, so some run while backups wait, and others withdraw); in 5 of
// the rounds one daemon is killed (-9) at a random moment and restarted.
// Afterwards every Ready backup restores bit-identical to the volume as it
// was when the backup was asked for, the repository verifies, and no
// marker is left.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak")
	}
	requireTools(t, "qemu-io")
	_, srv := targetEnv(t)
	for _, tc := range []struct{ name, tag string }{
		{"local", ""},
		{"s3", "fsInfo::type::s3::url::" + srv.Endpoint + "/backups/soak"},
	} {
		t.Run(tc.name, func(t *testing.T) { soak(t, srv, tc.tag) })
	}
}

func soak(t *testing.T, srv *storetest.S3Server, tag string) {
	const rounds, size = 20, 8 << 20
	kills := map[int]bool{3: true, 7: true, 11: true, 14: true, 18: true}
	dir := t.TempDir()
	store := filepath.Join(dir, "shared")
	rng := rand.New(rand.NewPCG(uint64(len(tag)), 13))
	type node struct {
		state, bs, vol, uri string
		d                   *daemonProc
	}
	nodes := make([]*node, 2)
	for i := range nodes {
		n := &node{state: filepath.Join(dir, fmt.Sprintf("state%d", i)), bs: fmt.Sprintf("%031x%d", 0x5a, i),
			vol: fmt.Sprintf("%031x%d", 0x5b, i)}
		n.d = startDaemon(t, n.state)
		n.uri = setupVolume(t, n.d, store, n.bs, n.vol, size)
		nodes[i] = n
	}
	var tags []string
	if tag != "" {
		tags = []string{tag}
	}
	mirror := make([]byte, size)      // both volumes' content
	expected := map[string][32]byte{} // backup id -> the volume's content when asked
	var mu sync.Mutex
	var ready, killed, gcs int
	for round := range rounds {
		var wg sync.WaitGroup
		victim := -1
		if kills[round] {
			victim = round % 2
		}
		// A few writes, the same on both volumes, mirrored: the volumes
		// stay equal, so the two daemons' backups store the same chunks
		// at the same moment, find each other's (and a killed backup's
		// orphans) stored, and collect around them.
		type write struct {
			off, ln int
			p       byte
		}
		var writes [3]write
		for w := range writes {
			off := rng.IntN(size/4096) * 4096
			ln := (1 + rng.IntN(64)) * 4096
			if off+ln > size {
				ln = size - off
			}
			writes[w] = write{off, ln, byte(rng.IntN(255) + 1)}
		}
		for _, w := range writes {
			for _, n := range nodes {
				tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d %d %d", w.p, w.off, w.ln), n.uri)
			}
			for j := w.off; j < w.off+w.ln; j++ {
				mirror[j] = w.p
			}
		}
		want := sha256.Sum256(mirror)
		// Then both daemons' jobs at once; in odd rounds the collection is
		// asked first, so that it runs and the backups wait for it, rather
		// than it finding a backup running and withdrawing.
		for i, n := range nodes {
			id := chunkstore.NewID()
			expected[id] = want
			backup := func() apiReply {
				acc := n.d.do("POST", "/volumes/"+n.vol+"/volume-backups", "OAuth "+n.d.session,
					backupBody(n.bs, fmt.Sprintf("r%d", round), `,"resourceUuid":"`+id+`"`, tags...), nil)
				if acc.status != 202 {
					t.Fatalf("round %d node %d: backup: %d %s", round, i, acc.status, acc.body)
				}
				return acc
			}
			collect := func() apiReply {
				gc := n.d.do("PUT", "/backup-storage/image-store/"+n.bs+"/actions", "OAuth "+n.d.session, `{"reclaimSpaceFromImageStore":{}}`, nil)
				if gc.status != 202 {
					t.Fatalf("round %d node %d: gc: %d %s", round, i, gc.status, gc.body)
				}
				return gc
			}
			var acc, gc apiReply
			if round%2 == 1 {
				gc = collect()
				acc = backup()
			} else {
				acc = backup()
				gc = collect()
			}
			if i == victim {
				continue // its jobs die with it
			}
			wg.Add(2)
			go func(d *daemonProc, loc string) {
				defer wg.Done()
				if r := d.poll(loc); r.status != 200 {
					t.Errorf("round %d: backup: %d %s", round, r.status, r.body)
				}
				mu.Lock()
				ready++
				mu.Unlock()
			}(n.d, acc.obj(t)["location"].(string))
			go func(d *daemonProc, loc string) {
				defer wg.Done()
				// A collection may withdraw while backups run (503); it
				// must never fail otherwise.
				r := d.poll(loc)
				if r.status == 200 {
					mu.Lock()
					gcs++
					mu.Unlock()
				} else if !strings.Contains(string(r.body), "backups are running") {
					t.Errorf("round %d: gc: %d %s", round, r.status, r.body)
				}
			}(n.d, gc.obj(t)["location"].(string))
		}
		if victim >= 0 {
			n := nodes[victim]
			time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
			_ = n.d.cmd.Process.Kill()
			_ = n.d.cmd.Wait()
			killed++
			n.d = startDaemon(t, n.state)
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}

	if gcs == 0 {
		t.Errorf("no collection ran beside the backups in %d rounds: each found one running", rounds)
	}

	// Every Ready backup restores as its volume was.
	restored := 0
	var bytes int64
	repo := store
	for _, n := range nodes {
		invs := n.d.do("GET", "/volume-backups?q=status=Ready", "OAuth "+n.d.session, "", nil).obj(t)["inventories"].([]any)
		for _, b := range invs {
			inv := b.(map[string]any)
			id := inv["uuid"].(string)
			repo = installRepo(t, inv)
			out := filepath.Join(t.TempDir(), "restored.raw")
			mustRun(t, "restore", "--repo", repo, id, out)
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(data) != expected[id] {
				t.Errorf("backup %s restores to other data than its volume held", id)
			}
			restored++
			bytes += int64(len(data))
			_ = os.Remove(out)
		}
	}
	if restored < ready {
		t.Errorf("%d backups restored, %d jobs succeeded", restored, ready)
	}
	verify := mustRun(t, "--json", "verify", "--repo", repo)
	// The daemons shared their chunks: a round's two backups hold the
	// same data, at most two 4 MiB chunks of it new.
	var vr struct{ Chunks int }
	if err := json.Unmarshal([]byte(verify.stdout), &vr); err != nil {
		t.Fatalf("verify output: %v: %s", err, verify.stdout)
	}
	if vr.Chunks > 2*rounds {
		t.Errorf("%d chunks stored for %d rounds of equal volumes: the daemons did not share them", vr.Chunks, rounds)
	}
	// No marker left once a last collection ran: every backup and
	// collection has ended, and the killed ones' markers were removed or
	// recognised as dead and collected.
	if r := nodes[0].d.job("PUT", "/backup-storage/image-store/"+nodes[0].bs+"/actions", `{"reclaimSpaceFromImageStore":{}}`, nil); r.status != 200 {
		t.Errorf("last gc: %d %s", r.status, r.body)
	}
	var left []string
	if tag == "" {
		paths, _ := filepath.Glob(filepath.Join(store, "locks", "*"))
		for _, p := range paths {
			left = append(left, filepath.Base(p))
		}
	} else {
		out, err := srv.Client().ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String("backups"), Prefix: aws.String("soak/locks/")})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out.Contents {
			left = append(left, aws.ToString(o.Key))
		}
	}
	if len(left) > 0 {
		t.Errorf("markers left: %v", left)
	}
	t.Logf("%d rounds, %d kills: %d backups asked, %d jobs succeeded, %d collections ran, %d backups restored (%d MiB), verify %s",
		rounds, killed, len(expected), ready, gcs, restored, bytes>>20, strings.Join(strings.Fields(verify.stdout), " "))
}
