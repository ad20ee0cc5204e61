package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests run the real volback binary, built once without the race
// detector, so multi-gigabyte images move at production speed while the
// packages' own tests cover the same code under -race.
var volbackBin string

func TestMain(m *testing.M) {
	// No test, and no daemon a test starts, may ask a metadata service
	// for credentials: traffic stays on this machine.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	dir, err := os.MkdirTemp("", "volback-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	volbackBin = filepath.Join(dir, "volback")
	build := exec.Command("go", "build", "-o", volbackBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building volback:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	return runIn(t, "", args...)
}

// runIn runs volback in the working directory dir ("" for the test's).
func runIn(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(volbackBin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("volback %s: %v", strings.Join(args, " "), err)
	}
	return r
}

func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := run(t, args...)
	if r.code != 0 {
		t.Fatalf("volback %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

type backupOut struct {
	ID    string `json:"id"`
	Size  int64  `json:"size"`
	Stats struct {
		BytesRead   int64 `json:"bytesRead"`
		BytesStored int64 `json:"bytesStored"`
		ChunksTotal int   `json:"chunksTotal"`
		ChunksNew   int   `json:"chunksNew"`
		ChunksDedup int   `json:"chunksDedup"`
		ChunksZero  int   `json:"chunksZero"`
	} `json:"stats"`
	Seconds float64 `json:"seconds"`
}

func backupJSONRun(t *testing.T, repo, img string, extra ...string) backupOut {
	t.Helper()
	args := append([]string{"--json", "backup", "--repo", repo}, extra...)
	r := mustRun(t, append(args, img)...)
	var b backupOut
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil {
		t.Fatalf("backup --json printed %q: %v", r.stdout, err)
	}
	return b
}

func sameFiles(t *testing.T, a, b string) bool {
	t.Helper()
	err := exec.Command("cmp", "-s", a, b).Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false
	}
	if err != nil {
		t.Fatalf("cmp %s %s: %v", a, b, err)
	}
	return true
}

// writeRandomAt overwrites n bytes of path at off with random data.
func writeRandomAt(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	rand.Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestFourGiBRoundTripAndDedup is the foundation's acceptance test: a
// generated 4 GiB image (half random, a quarter text, a quarter zeros,
// not a multiple of the chunk size) backs up and restores bit-identical;
// backing it up again stores nothing new; one changed 4 MiB region stores
// exactly one chunk.
func TestFourGiBRoundTripAndDedup(t *testing.T) {
	if testing.Short() {
		t.Skip("4 GiB round trip skipped in -short mode")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "volume.raw")
	repo := filepath.Join(dir, "repo")
	const size = 4<<30 + 12345 // not a multiple of 4 MiB
	mustRun(t, "bench", "image", "--size", fmt.Sprint(size), "--seed", "7", img)
	mustRun(t, "repo", "init", "--repo", repo)

	full := backupJSONRun(t, repo, img, "--parallelism", "4")
	wantChunks := (size + 4<<20 - 1) / (4 << 20)
	// The image's zero stripes are holes, never read; the last, partial
	// chunk is random data.
	if want := size - int64(full.Stats.ChunksZero)*(4<<20); full.Stats.ChunksTotal != wantChunks || full.Stats.BytesRead != want {
		t.Fatalf("full backup: %d chunks, %d bytes read; want %d, %d (all but the %d zero chunks, holes)", full.Stats.ChunksTotal, full.Stats.BytesRead, wantChunks, want, full.Stats.ChunksZero)
	}
	// A quarter of the image is zeros: those chunks are never stored.
	if full.Stats.ChunksZero < wantChunks/4-1 || full.Stats.ChunksNew+full.Stats.ChunksZero+full.Stats.ChunksDedup != wantChunks {
		t.Fatalf("full backup: %d zero, %d new, %d dedup of %d", full.Stats.ChunksZero, full.Stats.ChunksNew, full.Stats.ChunksDedup, wantChunks)
	}
	// The text quarter compresses, so less than the non-zero data is stored.
	if nonZero := int64(size) - int64(full.Stats.ChunksZero)*(4<<20); full.Stats.BytesStored >= nonZero {
		t.Fatalf("stored %d bytes for %d non-zero bytes: nothing compressed", full.Stats.BytesStored, nonZero)
	}
	t.Logf("full backup of %d bytes: %.2f s, %.0f MiB/s, %d bytes stored", size, full.Seconds, float64(size)/full.Seconds/(1<<20), full.Stats.BytesStored)

	out := filepath.Join(dir, "restored.raw")
	start := time.Now()
	mustRun(t, "restore", "--repo", repo, full.ID, out)
	t.Logf("restore: %.2f s", time.Since(start).Seconds())
	if !sameFiles(t, img, out) {
		t.Fatal("restored image differs from the original")
	}
	os.Remove(out)

	again := backupJSONRun(t, repo, img)
	if again.Stats.ChunksNew != 0 || again.Stats.BytesStored != 0 {
		t.Fatalf("second backup of unchanged data stored %d chunks (%d bytes), want 0", again.Stats.ChunksNew, again.Stats.BytesStored)
	}
	// Change one 4 MiB-aligned region inside a random stripe.
	writeRandomAt(t, img, 100<<20, 4<<20)
	changed := backupJSONRun(t, repo, img, "--parent", again.ID)
	if changed.Stats.ChunksNew != 1 {
		t.Fatalf("after changing one 4 MiB region: %d new chunks, want 1", changed.Stats.ChunksNew)
	}
	mustRun(t, "restore", "--repo", repo, changed.ID, out)
	if !sameFiles(t, img, out) {
		t.Fatal("restore of the changed image differs")
	}
}

// TestInitFormatOne: `repo init --format 1` makes a repository keyed as
// builds before format 3 key it, which backs up, restores and verifies;
// the default is format 3; bad formats and --format with --encrypt are
// refused.
func TestInitFormatOne(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "volume.raw")
	mustRun(t, "bench", "image", "--size", "12MiB", img)
	for _, c := range []struct {
		args []string
		want int
	}{{nil, 3}, {[]string{"--format", "1", "--compression", "auto"}, 1}} {
		repo := filepath.Join(dir, fmt.Sprintf("repo%d", c.want))
		mustRun(t, append([]string{"repo", "init", "--repo", repo, "--chunk-size", "1MiB"}, c.args...)...)
		b, err := os.ReadFile(filepath.Join(repo, "config"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct{ Version int }
		if err := json.Unmarshal(b, &cfg); err != nil || cfg.Version != c.want {
			t.Fatalf("init %v: config %s (%v), want version %d", c.args, b, err, c.want)
		}
		bk := backupJSONRun(t, repo, img)
		out := filepath.Join(dir, "restored.raw")
		mustRun(t, "restore", "--repo", repo, bk.ID, out)
		if !sameFiles(t, img, out) {
			t.Fatalf("format %d: restored image differs", c.want)
		}
		os.Remove(out)
		mustRun(t, "verify", "--repo", repo, bk.ID)
	}
	for _, args := range [][]string{{"--format", "2"}, {"--format", "4"}, {"--format", "1", "--encrypt", "--password-file", "/dev/null"}} {
		r := run(t, append([]string{"repo", "init", "--repo", filepath.Join(dir, "bad")}, args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, "--format") {
			t.Fatalf("init %v: exit %d, stderr %q; want an error naming --format", args, r.code, r.stderr)
		}
	}
}

func smallRepo(t *testing.T, size string) (dir, repo, img string, b backupOut) {
	t.Helper()
	dir = t.TempDir()
	img = filepath.Join(dir, "volume.raw")
	repo = filepath.Join(dir, "repo")
	mustRun(t, "bench", "image", "--size", size, img)
	mustRun(t, "repo", "init", "--repo", repo)
	b = backupJSONRun(t, repo, img)
	return dir, repo, img, b
}

func chunkFiles(t *testing.T, repo string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repo, "chunks", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if !strings.HasPrefix(filepath.Base(f), ".") {
			out = append(out, f)
		}
	}
	return out
}

func TestCorruptChunk(t *testing.T) {
	dir, repo, _, b := smallRepo(t, "64MiB")
	mustRun(t, "verify", "--repo", repo)
	files := chunkFiles(t, repo)
	if len(files) == 0 {
		t.Fatal("no chunk files in the repository")
	}
	victim := files[len(files)/2]
	key := filepath.Base(victim)
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/3] ^= 0x01 // flip one bit of one byte
	if err := os.WriteFile(victim, data, 0o644); err != nil {
		t.Fatal(err)
	}

	r := run(t, "verify", "--repo", repo)
	if r.code == 0 {
		t.Fatal("verify exited 0 on a corrupt chunk")
	}
	if !strings.Contains(r.stderr, key) || !strings.Contains(r.stderr, b.ID) {
		t.Fatalf("verify output does not name chunk %s and backup %s:\n%s", key, b.ID, r.stderr)
	}
	rj := run(t, "--json", "verify", "--repo", repo)
	var rep struct {
		Bad []struct {
			Key string `json:"key"`
		} `json:"bad"`
	}
	if err := json.Unmarshal([]byte(rj.stdout), &rep); err != nil || len(rep.Bad) != 1 || rep.Bad[0].Key != key || rj.code != 3 {
		t.Fatalf("verify --json: exit %d, %q (%v); want exit 3 naming %s", rj.code, rj.stdout, err, key)
	}

	out := filepath.Join(dir, "restored.raw")
	r = run(t, "restore", "--repo", repo, b.ID, out)
	if r.code == 0 {
		t.Fatal("restore succeeded from a corrupt chunk")
	}
	if !strings.Contains(r.stderr, key) || !strings.Contains(r.stderr, "corrupt") {
		t.Fatalf("restore error does not name the corrupt chunk %s:\n%s", key, r.stderr)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("failed restore left %s behind", out)
	}
}

// TestBackupKilledMidway kills a backup with SIGKILL while it writes
// chunks: no manifest may appear, the repository must still verify, and
// the next backup must succeed.
func TestBackupKilledMidway(t *testing.T) {
	dir, repo, img, first := smallRepo(t, "32MiB")
	big := filepath.Join(dir, "big.raw")
	mustRun(t, "bench", "image", "--size", "2GiB", "--seed", "99", big)

	cmd := exec.Command(volbackBin, "--quiet", "backup", "--repo", repo, "--parallelism", "1", big)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	before := len(chunkFiles(t, repo))
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, _ := filepath.Glob(filepath.Join(repo, "chunks", "*", ".tmp-*"))
		if len(entries) > 0 || len(chunkFiles(t, repo)) > before {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("backup wrote no chunk within 30 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("backup ended before it was killed (%v); the test needs a bigger image", err)
	}

	manifests, _ := os.ReadDir(filepath.Join(repo, "manifests"))
	if len(manifests) != 1 || manifests[0].Name() != first.ID {
		names := []string{}
		for _, m := range manifests {
			names = append(names, m.Name())
		}
		t.Fatalf("manifests after the kill: %v, want only %s", names, first.ID)
	}
	mustRun(t, "verify", "--repo", repo)
	ls := mustRun(t, "--json", "ls", "--repo", repo)
	var list []backupOut
	if err := json.Unmarshal([]byte(ls.stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("ls after the kill: %s (%v)", ls.stdout, err)
	}

	again := backupJSONRun(t, repo, img)
	if again.Stats.ChunksNew != 0 {
		t.Fatalf("backup after the kill stored %d new chunks of unchanged data", again.Stats.ChunksNew)
	}
	out := filepath.Join(dir, "out.raw")
	mustRun(t, "restore", "--repo", repo, again.ID, out)
	if !sameFiles(t, img, out) {
		t.Fatal("restore after the kill differs")
	}
}

func TestCLIErrors(t *testing.T) {
	dir, repo, img, b := smallRepo(t, "8MiB")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing volume", []string{"backup", "--repo", repo, filepath.Join(dir, "nope.raw")}, "nope.raw"},
		{"not a repository", []string{"ls", "--repo", filepath.Join(dir, "empty")}, "repo init"},
		{"init twice", []string{"repo", "init", "--repo", repo}, "already exists"},
		{"bad chunk size", []string{"repo", "init", "--repo", filepath.Join(dir, "r2"), "--chunk-size", "3MiB"}, "power of two"},
		{"bad compression", []string{"repo", "init", "--repo", filepath.Join(dir, "r3"), "--compression", "brotli"}, "brotli"},
		{"unknown backup", []string{"restore", "--repo", repo, "0123456789abcdef0123456789abcdef", filepath.Join(dir, "x")}, "0123456789abcdef0123456789abcdef"},
		{"malformed backup id", []string{"verify", "--repo", repo, "../../etc"}, "invalid id"},
		{"restore over a file", []string{"restore", "--repo", repo, b.ID, img}, "--force"},
		{"unknown parent", []string{"backup", "--repo", repo, "--parent", "ffffffffffffffffffffffffffffffff", img}, "ffffffffffffffffffffffffffffffff"},
		{"no file", []string{"backup", "--repo", repo}, "exactly one FILE"},
		{"not a regular file", []string{"backup", "--repo", repo, "/dev/null"}, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, c.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want an error mentioning %q", c.want)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Fatalf("stderr %q does not mention %q", r.stderr, c.want)
			}
		})
	}
}

func TestQuietPrintsOnlyTheID(t *testing.T) {
	_, repo, img, _ := smallRepo(t, "8MiB")
	r := mustRun(t, "--quiet", "backup", "--repo", repo, img)
	id := strings.TrimSpace(r.stdout)
	if len(id) != 32 || r.stderr != "" {
		t.Fatalf("quiet backup printed stdout %q stderr %q; want only the id", r.stdout, r.stderr)
	}
	ls := mustRun(t, "ls", "--repo", repo)
	if !strings.Contains(ls.stdout, id) {
		t.Fatalf("ls does not list %s:\n%s", id, ls.stdout)
	}
}

// TestCorruptManifest: one manifest of three truncated. ls lists the other
// two and verify checks them, each naming the bad one and exiting 3; gc
// refuses, naming it, and deletes nothing.
func TestCorruptManifest(t *testing.T) {
	_, repo, img, first := smallRepo(t, "16MiB")
	// The second backup has chunks of its own, which a gc that skipped
	// its manifest would delete.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	own := make([]byte, 4<<20)
	if _, err := rand.Read(own); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(own, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	second := backupJSONRun(t, repo, img)
	third := backupJSONRun(t, repo, img)
	victim := filepath.Join(repo, "manifests", second.ID)
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	chunks := len(chunkFiles(t, repo))

	r := run(t, "ls", "--repo", repo)
	if r.code != 3 || !strings.Contains(r.stdout, first.ID) || !strings.Contains(r.stdout, third.ID) || strings.Contains(r.stdout, second.ID) ||
		!strings.Contains(r.stderr, second.ID) {
		t.Fatalf("ls with a bad manifest: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	r = run(t, "--json", "verify", "--repo", repo)
	var rep struct {
		Backups      int   `json:"backups"`
		Bytes        int64 `json:"bytes"`
		BadManifests []struct {
			ID string `json:"id"`
		} `json:"badManifests"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 3 || rep.Backups != 2 || rep.Bytes == 0 ||
		len(rep.BadManifests) != 1 || rep.BadManifests[0].ID != second.ID {
		t.Fatalf("verify with a bad manifest: exit %d, %s (%v)", r.code, r.stdout, err)
	}
	r = run(t, "gc", "--repo", repo)
	if r.code == 0 || !strings.Contains(r.stderr, second.ID) || !strings.Contains(r.stderr, "nothing deleted") {
		t.Fatalf("gc with a bad manifest: exit %d, %s", r.code, r.stderr)
	}
	if n := len(chunkFiles(t, repo)); n != chunks {
		t.Errorf("gc with a bad manifest: %d chunks left of %d", n, chunks)
	}
}
