package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore/target"
)

// TestEncryptedRepositoryCLI: init --encrypt, back up, restore with the
// passphrase; without it the repository is locked, with a wrong one it is
// refused by name; a second key opens it and a revoked one no longer does.
func TestEncryptedRepositoryCLI(t *testing.T) {
	dir := t.TempDir()
	img, repo := filepath.Join(dir, "img.raw"), filepath.Join(dir, "repo")
	mustRun(t, "bench", "image", "--size", "24MiB", img)
	t.Setenv("VOLBACK_PASSWORD", "first passphrase")
	mustRun(t, "repo", "init", "--encrypt", "--repo", repo)
	b := backupJSONRun(t, repo, img)
	out := filepath.Join(dir, "out.raw")
	mustRun(t, "restore", "--repo", repo, b.ID, out)
	if !sameFiles(t, img, out) {
		t.Fatal("restored image differs")
	}
	var cfg struct{ Version int }
	cb, _ := os.ReadFile(filepath.Join(repo, "config"))
	if json.Unmarshal(cb, &cfg); cfg.Version != 2 {
		t.Fatalf("config: %s", cb)
	}

	newPass := filepath.Join(dir, "new-pass")
	os.WriteFile(newPass, []byte("second passphrase\n"), 0o600)
	added := mustRun(t, "--json", "repo", "key", "add", "--repo", repo, "--new-password-file", newPass)
	var slot struct{ ID string }
	json.Unmarshal([]byte(added.stdout), &slot)

	t.Setenv("VOLBACK_PASSWORD", "")
	if r := run(t, "ls", "--repo", repo); r.code == 0 || !strings.Contains(r.stderr, "encrypted") {
		t.Fatalf("ls without a passphrase: exit %d, %s", r.code, r.stderr)
	}
	t.Setenv("VOLBACK_PASSWORD", "a guess")
	if r := run(t, "ls", "--repo", repo); r.code == 0 || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Fatalf("ls with a wrong passphrase: exit %d, %s", r.code, r.stderr)
	}
	// The new key, from a file, opens it; then the first one is revoked.
	t.Setenv("VOLBACK_PASSWORD", "")
	mustRun(t, "ls", "--repo", repo, "--password-file", newPass)
	list := mustRun(t, "--json", "repo", "key", "list", "--repo", repo, "--password-file", newPass)
	var slots []struct {
		ID      string
		Current bool
	}
	json.Unmarshal([]byte(list.stdout), &slots)
	if len(slots) != 2 {
		t.Fatalf("key list: %s", list.stdout)
	}
	for _, s := range slots {
		if s.ID != slot.ID {
			mustRun(t, "repo", "key", "remove", "--repo", repo, "--password-file", newPass, s.ID)
		}
	}
	t.Setenv("VOLBACK_PASSWORD", "first passphrase")
	if r := run(t, "ls", "--repo", repo); r.code == 0 || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Fatalf("revoked passphrase: exit %d, %s", r.code, r.stderr)
	}
}

// TestDaemonEncryptedStorage: an ImageStore tagged encryptionKey::NAME is
// encrypted with the key file <state-dir>/keys/NAME, which must be
// private; the key appears in no log, no inventory, no reply.
func TestDaemonEncryptedStorage(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	raw := make([]byte, 32)
	rand.Read(raw)
	key := "planted-" + hex.EncodeToString(raw)
	keyFile := filepath.Join(state, "keys", "prod")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store")
	const bsUUID, volUUID = "2c4b0a3a24533c4faa9b156a0ef98fdf", "fc7196ba2d993236aceddd9b31f5d19b"
	add := fmt.Sprintf(`{"params":{"name":"enc","url":"%s","resourceUuid":"%s"},"systemTags":["encryptionKey::prod"]}`, store, bsUUID)
	if r := d.do("POST", "/backup-storage/image-store", "OAuth "+d.session, add, nil); r.status == 202 || !strings.Contains(string(r.body), "chmod 600") {
		t.Fatalf("key file readable by others accepted: %d %s", r.status, r.body)
	}
	os.Chmod(keyFile, 0o600)
	if r := d.job("POST", "/backup-storage/image-store", add, nil); r.status != 200 {
		t.Fatalf("AddImageStoreBackupStorage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", fmt.Sprintf(`{"params":{"name":"data","diskSize":3.3554432E7,"resourceUuid":"%s"}}`, volUUID), nil); r.status != 200 {
		t.Fatalf("CreateDataVolume: %d %s", r.status, r.body)
	}
	uri := fmt.Sprintf("nbd+unix:///%s?socket=%s", volUUID, filepath.Join(state, "nbd.sock"))
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0x33 20M 1M", uri)
	r := d.job("POST", "/volumes/"+volUUID+"/volume-backups", `{"params":{"backupStorageUuid":"`+bsUUID+`","name":"enc-1"}}`, nil)
	if r.status != 200 {
		t.Fatalf("CreateVolumeBackup: %d %s", r.status, r.body)
	}
	id := r.obj(t)["inventory"].(map[string]any)["uuid"].(string)
	cb, _ := os.ReadFile(filepath.Join(store, "config"))
	if !strings.Contains(string(cb), `"version": 2`) {
		t.Fatalf("the storage's repository is not encrypted: %s", cb)
	}
	// The CLI restores it with the same key file; without, it is locked.
	if r := run(t, "ls", "--repo", store); r.code == 0 || !strings.Contains(r.stderr, "encrypted") {
		t.Fatalf("ls without the key: %d %s", r.code, r.stderr)
	}
	out, live := filepath.Join(dir, "out.raw"), filepath.Join(dir, "live.raw")
	mustRun(t, "restore", "--repo", store, "--password-file", keyFile, id, out)
	tool(t, time.Minute, "nbdcopy", uri, live)
	if !sameFiles(t, out, live) {
		t.Fatal("restored backup differs from the volume")
	}
	// Verify through the daemon reads it back with the key.
	if r := d.job("PUT", "/volume-backups/"+id+"/actions", `{"verifyVolumeBackup":{}}`, nil); r.status != 200 || !strings.Contains(string(r.body), `"verification":{"checked"`) || !strings.Contains(string(r.body), `"status":"Ready"`) {
		t.Errorf("verify: %d %s", r.status, r.body)
	}
	// No chunk holds the written pattern; the key is nowhere but its file.
	pattern := bytes.Repeat([]byte{0x5a}, 256)
	d.stop()
	for _, root := range []string{store, state, filepath.Dir(d.logPath)} {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() || p == keyFile {
				return nil
			}
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte(key)) {
				t.Errorf("%s holds the key", p)
			}
			if strings.HasPrefix(p, store) && bytes.Contains(b, pattern) {
				t.Errorf("%s holds the volume's data in the clear", p)
			}
			return nil
		})
	}
}

// TestEncryptedTargets: the encryptionKey tag beside fsInfo encrypts an
// NFS and an S3 target with the daemon's key file; full and incremental
// backups there restore with the same key through the CLI, and the
// repositories are locked without it.
func TestEncryptedTargets(t *testing.T) {
	requireTools(t, "qemu-io", "nbdcopy")
	g, srv := targetEnv(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	keyFile := filepath.Join(state, "keys", "offsite")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	const bs, vol = "4c4b0a3a24533c4faa9b156a0ef98fdf", "bc7196ba2d993236aceddd9b31f5d19b"
	uri := setupVolume(t, d, filepath.Join(dir, "store"), bs, vol, 24<<20)
	tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 9M", uri)
	for _, tag := range []string{
		"fsInfo::type::nfs::url::" + g.URL("backups/enc") + "::options::" + g.Options(),
		"fsInfo::type::s3::url::s3://backups/enc::options::endpoint=" + srv.Endpoint + ",path-style,region=us-east-1",
	} {
		var repo string
		for i := 0; i < 2; i++ {
			tool(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x30+i, 12+i), uri)
			r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, fmt.Sprint("enc-", i), "", tag, "encryptionKey::offsite"), nil)
			if r.status != 200 {
				t.Fatalf("backup to %s: %d %s", target.Redact(tag), r.status, r.body)
			}
			inv := r.obj(t)["inventory"].(map[string]any)
			repo = installRepo(t, inv)
			if i == 1 {
				if md := metadata(t, inv); md["mode"] != "incremental" {
					t.Errorf("%s: second backup %v", repo, md)
				}
				out, live := filepath.Join(dir, "out.raw"), filepath.Join(dir, "live.raw")
				os.Remove(out)
				mustRun(t, "restore", "--repo", repo, "--password-file", keyFile, inv["uuid"].(string), out)
				tool(t, time.Minute, "nbdcopy", uri, live)
				if !sameFiles(t, out, live) {
					t.Fatalf("%s: restored backup differs", repo)
				}
			}
		}
		if r := run(t, "ls", "--repo", repo); r.code == 0 || !strings.Contains(r.stderr, "encrypted") {
			t.Errorf("%s without the key: exit %d %s", repo, r.code, r.stderr)
		}
	}
	if b, err := os.ReadFile(filepath.Join(g.Export, "backups/enc/config")); err != nil || !strings.Contains(string(b), `"version": 2`) {
		t.Errorf("the NFS target is not an encrypted repository: %s %v", b, err)
	}
}
