package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore/storetest"
)

// TestServeLiveBackupToTargets: volback serve backs up live into an
// nfs:// and an s3:// repository through the one repository opener: a
// full backup, then an incremental that reads only the changed chunk,
// each restoring bit-identical to the volume as it was.
func TestServeLiveBackupToTargets(t *testing.T) {
	g := storetest.StartGanesha(t)
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "live")
	t.Setenv("VOLBACK_S3_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("VOLBACK_S3_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	nfsPath := strings.TrimPrefix(g.URL("live/repo"), "127.0.0.1:")
	repos := map[string]string{
		"nfs": "nfs://127.0.0.1" + nfsPath + "?" + strings.ReplaceAll(g.Options(), ",", "&"),
		"s3":  "s3://live/repo?endpoint=" + srv.Endpoint + "&path-style&region=us-east-1",
	}
	const size = 8 << 20
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol.raw")
	if err := os.WriteFile(vol, fileContent(3, size), 0o600); err != nil {
		t.Fatal(err)
	}
	s := serve(t, map[string]string{"vol1": vol})
	for _, kind := range []string{"nfs", "s3"} {
		repo := repos[kind]
		mustRun(t, "repo", "init", "--repo", repo, "--chunk-size", "1MiB")
		full := s.backup(repo, "vol1", "--mode", "full")
		atFull, _ := os.ReadFile(vol)
		// Change one chunk through NBD, then back up again.
		tool(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x61 3M 4k", s.uri("vol1"))
		inc := s.backup(repo, "vol1")
		atInc, _ := os.ReadFile(vol)
		if inc.Mode != "incremental" || inc.Parent != full.ID || inc.Stats.ChunksRead != 1 {
			t.Errorf("%s: second backup %s, parent %s, read %d chunks; want incremental from %s reading 1", kind, inc.Mode, inc.Parent, inc.Stats.ChunksRead, full.ID)
		}
		for _, c := range []struct {
			id   string
			want []byte
		}{{full.ID, atFull}, {inc.ID, atInc}} {
			out := filepath.Join(dir, kind+"-"+c.id+".raw")
			mustRun(t, "restore", "--repo", repo, c.id, out)
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, c.want) {
				t.Errorf("%s: backup %s does not restore to the volume as it was", kind, c.id)
			}
		}
	}
}

// startLiveBackup runs `volback backup --live` in the background and
// waits until the daemon has started the backup.
func startLiveBackup(t *testing.T, s *served, repo, vol string, extra ...string) (*exec.Cmd, *bytes.Buffer, string) {
	t.Helper()
	id := fmt.Sprintf("%032x", time.Now().UnixNano())
	args := append([]string{"backup", "--live", "--state-dir", s.stateDir, "--repo", repo, "--id", id}, extra...)
	cmd := exec.Command(volbackBin, append(args, vol)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.waitLog(t, "live backup started", id)
	return cmd, &stderr, id
}

// waitLog waits until the server's log has a line holding every part.
func (s *served) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		for _, line := range strings.Split(s.logText(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within 30 s:\n%s", parts, s.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLiveBackupLifetime: a live backup belongs to the daemon. A client
// that dies leaves it running to its end; a client interrupted with
// Ctrl-C cancels it and says so, and no backup is left.
func TestLiveBackupLifetime(t *testing.T) {
	const size = 16 << 20
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol.raw")
	if err := os.WriteFile(vol, fileContent(5, size), 0o600); err != nil {
		t.Fatal(err)
	}
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(dir, "repo")
	mustRun(t, "repo", "init", "--repo", repo, "--chunk-size", "1MiB")

	// 16 MiB at 8 MiB/s: about two seconds, time to kill the client.
	cmd, _, id := startLiveBackup(t, s, repo, "vol1", "--read-bandwidth", "8MiB")
	cmd.Process.Kill()
	cmd.Wait()
	s.waitLog(t, "live backup done", id)
	if r := mustRun(t, "ls", "--repo", repo); !strings.Contains(r.stdout, id) {
		t.Fatalf("the backup of a client that died is not in the repository:\n%s", r.stdout)
	}

	cmd, stderr, id2 := startLiveBackup(t, s, repo, "vol1", "--mode", "full", "--read-bandwidth", "4MiB")
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil {
		t.Fatal("an interrupted live backup exited 0")
	}
	if want := "cancelled live backup " + id2 + " of volume vol1"; !strings.Contains(stderr.String(), want) {
		t.Errorf("interrupted client said %q, want %q", stderr.String(), want)
	}
	if strings.Contains(stderr.String(), "is `volback serve` running") {
		t.Errorf("interrupted client suggests the server is down: %q", stderr.String())
	}
	s.waitLog(t, "live backup cancelled by its client", id2)
	if r := mustRun(t, "ls", "--repo", repo); strings.Contains(r.stdout, id2) {
		t.Errorf("a cancelled backup is in the repository:\n%s", r.stdout)
	}
}

// TestGlobalFlagsEitherSide: --json, --quiet and --repo mean the same
// before and after the command.
func TestGlobalFlagsEitherSide(t *testing.T) {
	_, repo, img, b := smallRepo(t, "1MiB")
	for _, args := range [][]string{
		{"--json", "ls", "--repo", repo},
		{"ls", "--json", "--repo", repo},
		{"--repo", repo, "ls", "--json"},
		{"--json", "--repo", repo, "ls"},
	} {
		r := mustRun(t, args...)
		if !strings.HasPrefix(strings.TrimSpace(r.stdout), "[") || !strings.Contains(r.stdout, b.ID) {
			t.Errorf("volback %s printed %q, want a JSON list naming %s", strings.Join(args, " "), r.stdout, b.ID)
		}
	}
	for _, args := range [][]string{
		{"--quiet", "backup", "--repo", repo, img},
		{"backup", "--quiet", "--repo", repo, img},
		{"backup", "-q", "--repo", repo, img},
	} {
		r := mustRun(t, args...)
		if len(strings.TrimSpace(r.stdout)) != 32 || r.stderr != "" {
			t.Errorf("volback %s: stdout %q stderr %q, want only the id", strings.Join(args, " "), r.stdout, r.stderr)
		}
	}
	if r := run(t, "ls"); r.code == 0 || !strings.Contains(r.stderr, "--repo is required") {
		t.Errorf("ls without --repo: code %d, %q", r.code, r.stderr)
	}
}
