package control

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/nbd"
)

// TestVerifyBackups: a stored chunk corrupted on disk. VerifyVolumeBackup
// marks the backup Corrupt and names the chunk when the live volume no
// longer holds its content; the next backup of the chain is then full,
// saying why. A chunk the live volume still holds is repaired from it and
// its backup stays Ready. /metrics counts both.
func TestVerifyBackups(t *testing.T) {
	ctx := context.Background()
	d := startTestDaemon(t)
	d.api.Metrics = NewMetrics(nbd.NewServer())
	bs, vol := chunkstore.NewID(), chunkstore.NewID()
	d.storageAndVolume(bs, vol, 8<<20)
	v := d.api.Host.Volume(vol)
	data := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{5}).Read(data)
	if err := v.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	backup := func(name string) backupInventory {
		t.Helper()
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"`+name+`"}}`, nil)
		var got struct {
			Inventory backupInventory `json:"inventory"`
		}
		if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("backup %s: %d %s", name, r.status, r.body)
		}
		return got.Inventory
	}
	store := filepath.Join(d.dir, "store-"+bs)
	repo, err := d.api.openRepo(ctx, target.Spec{Kind: target.Local, URL: store}, target.Env{}, target.RepoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	corrupt := func(k chunkstore.Key) {
		t.Helper()
		p := filepath.Join(store, "chunks", k.String()[:2], k.String())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x10
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	type answer struct {
		Inventory    backupInventory `json:"inventory"`
		Verification verification    `json:"verification"`
	}
	verify := func(id string) answer {
		t.Helper()
		r := d.job("PUT", "/volume-backups/"+id+"/actions", `{"verifyVolumeBackup":{}}`, nil)
		var a answer
		if r.status != 200 || json.Unmarshal([]byte(r.body), &a) != nil {
			t.Fatalf("verify %s: %d %s", id, r.status, r.body)
		}
		return a
	}

	first := backup("first")
	m1, err := repo.LoadManifest(ctx, first.UUID)
	if err != nil || len(m1.Chunks) != 2 {
		t.Fatalf("first backup: %v %v", m1, err)
	}
	if a := verify(first.UUID); a.Inventory.Status != "Ready" || a.Verification.Chunks != 2 || len(a.Verification.BadChunks) != 0 {
		t.Fatalf("verify of a good backup: %+v", a)
	}
	// The first chunk's place on the volume changes: it cannot be repaired.
	corrupt(m1.Chunks[0])
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	a := verify(first.UUID)
	if a.Inventory.Status != "Corrupt" || len(a.Verification.BadChunks) != 1 || a.Verification.BadChunks[0] != m1.Chunks[0].String() ||
		!strings.Contains(a.Inventory.Metadata, m1.Chunks[0].String()) {
		t.Fatalf("verify of a corrupt backup: %+v", a)
	}
	if b, _ := d.api.DB.GetVolumeBackup(ctx, first.UUID); b.Status != inventory.StatusCorrupt {
		t.Errorf("inventory after a failed verification: %s", b.Status)
	}
	// Not a parent: the next backup of the chain is full.
	second := backup("second")
	var md backupMetadata
	_ = json.Unmarshal([]byte(second.Metadata), &md)
	if md.Mode != "full" || !strings.Contains(md.FullReason, "failed verification") {
		t.Errorf("backup after a corrupt parent: %s, %q", md.Mode, md.FullReason)
	}
	// The second chunk is unchanged on the volume: repaired from it.
	m2, _ := repo.LoadManifest(ctx, second.UUID)
	corrupt(m2.Chunks[1])
	a = verify(second.UUID)
	if a.Inventory.Status != "Ready" || len(a.Verification.Repaired) != 1 || len(a.Verification.BadChunks) != 0 {
		t.Fatalf("verify with a repairable chunk: %+v", a)
	}
	if rep, err := repo.Verify(ctx, []string{second.UUID}, chunkstore.VerifyOptions{}); err != nil || !rep.OK() {
		t.Errorf("the repaired backup: %+v %v", rep, err)
	}
	metrics := func() string {
		rec := httptest.NewRecorder()
		d.api.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	for _, want := range []string{`volback_verifications_total{result="corrupt"} 1`, `volback_verifications_total{result="ok"} 2`, "volback_verify_repaired_chunks_total 1"} {
		if !strings.Contains(metrics(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The schedule re-verifies both: one more of each.
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.api.verifyEvery(sctx, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(time.Minute)
	count := func(result string) int {
		var n int
		for _, line := range strings.Split(metrics(), "\n") {
			if rest, ok := strings.CutPrefix(line, `volback_verifications_total{result="`+result+`"} `); ok {
				n, _ = strconv.Atoi(rest)
			}
		}
		return n
	}
	for count("corrupt") < 2 || count("ok") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the schedule did not verify both backups:\n%s", metrics())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}
