package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vol.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestNBDInfoAdvertises(t *testing.T) {
	requireTools(t, "nbdinfo")
	vol := sparseFile(t, 64<<20)
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "repo", "init", "--repo", repo)
	s.backup(repo, "vol1") // creates the chain, so its dirty bitmap is listed

	var info struct {
		Structured bool `json:"structured"`
		Exports    []map[string]any
	}
	if err := json.Unmarshal([]byte(tool(t, 30*time.Second, "nbdinfo", "--json", s.uri("vol1"))), &info); err != nil {
		t.Fatal(err)
	}
	if !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: structured=%v exports=%d", info.Structured, len(info.Exports))
	}
	e := info.Exports[0]
	for _, flag := range []string{"can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df"} {
		if e[flag] != true {
			t.Errorf("nbdinfo: %s = %v, want true", flag, e[flag])
		}
	}
	if e["is_read_only"] != false || e["export-size"] != float64(64<<20) {
		t.Errorf("nbdinfo: read-only %v size %v", e["is_read_only"], e["export-size"])
	}
	ctxs := fmt.Sprint(e["contexts"])
	if !strings.Contains(ctxs, "base:allocation") || !strings.Contains(ctxs, "qemu:dirty-bitmap:") {
		t.Errorf("nbdinfo contexts %s, want base:allocation and a qemu:dirty-bitmap", ctxs)
	}
	list := tool(t, 30*time.Second, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+s.socket())
	if !strings.Contains(list, `"export-name": "vol1"`) {
		t.Errorf("nbdinfo --list does not list vol1:\n%s", list)
	}
}

// mapOf parses `nbdinfo --map` output into "offset length flags" lines.
func mapOf(t *testing.T, out string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 {
			lines = append(lines, f[0]+" "+f[1]+" "+f[2])
		}
	}
	return lines
}

func TestNBDInfoMaps(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	const size = 16 << 20
	vol := sparseFile(t, size)
	s := serve(t, map[string]string{"vol1": vol})
	repo := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "repo", "init", "--repo", repo)
	b := s.backup(repo, "vol1")

	// Write 1 MiB at 2 MiB, and 4 KiB across the 64 KiB block boundary
	// at 9 MiB + 64 KiB, through NBD.
	tool(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 2M 1M", "-c", "write -P 0x33 9502620 4096", s.uri("vol1"))

	alloc := mapOf(t, tool(t, 30*time.Second, "nbdinfo", "--map", s.uri("vol1")))
	want := []string{
		"0 2097152 3", "2097152 1048576 0", "3145728 6352896 3",
		"9498624 8192 0", "9506816 7270400 3",
	}
	if fmt.Sprint(alloc) != fmt.Sprint(want) {
		t.Errorf("base:allocation map:\ngot  %v\nwant %v", alloc, want)
	}
	chain := strings.TrimPrefix(fmt.Sprint(chainName(t, repo)), "")
	dirty := mapOf(t, tool(t, 30*time.Second, "nbdinfo", "--map=qemu:dirty-bitmap:"+chain, s.uri("vol1")))
	// 64 KiB granularity: the 1 MiB write is 16 blocks; the 4 KiB write
	// straddles two.
	wantDirty := []string{"0 2097152 0", "2097152 1048576 1", "3145728 6291456 0", "9437184 131072 1", "9568256 7208960 0"}
	if fmt.Sprint(dirty) != fmt.Sprint(wantDirty) {
		t.Errorf("dirty bitmap map:\ngot  %v\nwant %v", dirty, wantDirty)
	}
	// After the next backup the map restarts empty.
	inc := s.backup(repo, "vol1")
	if inc.Parent != b.ID || inc.Mode != "incremental" || inc.Stats.ChunksRead != 2 {
		t.Errorf("incremental after the writes: parent %s mode %s read %d chunks; want %s, incremental, 2", inc.Parent, inc.Mode, inc.Stats.ChunksRead, b.ID)
	}
	dirty = mapOf(t, tool(t, 30*time.Second, "nbdinfo", "--map=qemu:dirty-bitmap:"+chain, s.uri("vol1")))
	if fmt.Sprint(dirty) != fmt.Sprint([]string{"0 16777216 0"}) {
		t.Errorf("dirty map after a backup: %v, want all clean", dirty)
	}
}

// chainName is the chain a repository's backups use: its config id.
func chainName(t *testing.T, repo string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "config"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.ID
}

func TestNBDCopyLoop(t *testing.T) {
	requireTools(t, "nbdcopy")
	const size = 256 << 20
	vol := sparseFile(t, size)
	s := serve(t, map[string]string{"vol1": vol})
	dir := t.TempDir()
	for i := range 20 {
		src := filepath.Join(dir, "src.raw")
		mustRun(t, "bench", "image", "--size", strconv.Itoa(size), "--seed", strconv.Itoa(100+i), "--pattern", []string{"rrtz", "rtzr", "zrrt"}[i%3], src)
		tool(t, 60*time.Second, "nbdcopy", "--connections=4", "--requests=16", src, s.uri("vol1"))
		out := filepath.Join(dir, "out.raw")
		tool(t, 60*time.Second, "nbdcopy", "--connections=4", "--requests=16", s.uri("vol1"), out)
		if !sameFiles(t, src, out) {
			t.Fatalf("round %d: data read back over NBD differs from what was written", i)
		}
		if !sameFiles(t, src, vol) {
			t.Fatalf("round %d: backing file differs from what was written", i)
		}
	}
}

func TestQemuTools(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io")
	const size = 32 << 20
	vol := filepath.Join(t.TempDir(), "vol.raw")
	mustRun(t, "bench", "image", "--size", strconv.Itoa(size), "--seed", "8", vol)
	s := serve(t, map[string]string{"vol1": vol})
	dir := t.TempDir()

	// qemu-img convert out of the export matches the backing file.
	q := filepath.Join(dir, "copy.qcow2")
	tool(t, 60*time.Second, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.uri("vol1"), q)
	tool(t, 60*time.Second, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", vol, q)

	// qemu-io: patterns, zeroes, discard; each is checked by reading it
	// back over NBD (read -P verifies) and in the backing file.
	out := tool(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 64k",
		"-c", "write -P 0xcd 1000000 70000",
		"-c", "write -z 2M 1M",
		"-c", "write -z -u 4M 128k",
		"-c", "discard 6M 1M",
		"-c", "write -f -P 0xef 8M 4k",
		"-c", "read -P 0xab 0 64k",
		"-c", "read -P 0xcd 1000000 70000",
		"-c", "read -P 0 2M 1M",
		"-c", "read -P 0 4M 128k",
		"-c", "read -v 8M 16",
		"-c", "flush",
		s.uri("vol1"))
	if strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "ef ef ef ef") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	b, err := os.ReadFile(vol)
	if err != nil {
		t.Fatal(err)
	}
	check := func(off, n int, want byte, what string) {
		for i := off; i < off+n; i++ {
			if b[i] != want {
				t.Fatalf("backing file byte %d = %#x, want %#x (%s)", i, b[i], want, what)
			}
		}
	}
	check(0, 64<<10, 0xab, "write -P 0xab")
	check(1000000, 70000, 0xcd, "write -P 0xcd")
	check(2<<20, 1<<20, 0, "write -z")
	check(4<<20, 128<<10, 0, "write -z -u")
	check(8<<20, 4096, 0xef, "write -F (FUA)")
	// Discarded ranges may read back as anything; ours punch holes.
	check(6<<20, 1<<20, 0, "discard")
	// The whole export still matches the file, byte for byte.
	tool(t, 60*time.Second, "qemu-img", "compare", "-f", "raw", "-F", "raw", vol, s.uri("vol1"))
}

// nbdshScript runs a Python script with the nbd module (nbdsh's engine)
// against the export; the script prints one line per check.
func nbdshScript(t *testing.T, uri, script string) string {
	t.Helper()
	requireTools(t, "nbdsh")
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		py = "python3"
	}
	f := filepath.Join(t.TempDir(), "check.py")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, f, uri)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", f, err, out)
	}
	return string(out)
}

func TestNBDShBadRequests(t *testing.T) {
	vol := sparseFile(t, 64<<20)
	s := serve(t, map[string]string{"vol1": vol})
	out := nbdshScript(t, s.uri("vol1"), `
import errno, sys
import nbd
h = nbd.NBD()
h.set_strict_mode(0)   # let bad requests reach the server
h.connect_uri(sys.argv[1])
size = h.get_size()

def expect(name, want, fn):
    try:
        fn()
        print(name, "OK-UNEXPECTED")
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errnum, e.errnum))
    # The connection must survive every bad request.
    h.pread(512, 0)

expect("read-past-end", "EINVAL", lambda: h.pread(4096, size - 100))
expect("read-offset-past-end", "EINVAL", lambda: h.pread(1, size + 4096))
expect("write-past-end", "ENOSPC", lambda: h.pwrite(b"x" * 4096, size - 100))
expect("trim-past-end", "EINVAL", lambda: h.trim(8192, size - 4096))
expect("zero-past-end", "ENOSPC", lambda: h.zero(8192, size - 4096))
expect("read-bad-flag", "EINVAL", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_FUA))
expect("flush-bad-flag", "EINVAL", lambda: h.flush(flags=nbd.CMD_FLAG_NO_HOLE))
expect("write-unknown-flag", "EINVAL", lambda: h.pwrite(b"y" * 512, 0, flags=1 << 7))
expect("read-too-big", "EOVERFLOW", lambda: h.pread(33 * 1024 * 1024, 0))
h.pwrite(b"z" * 4096, 4096)
assert h.pread(4096, 4096) == b"z" * 4096
print("alive", "OK")
h.shutdown()
`)
	want := map[string]string{
		"read-past-end": "EINVAL", "read-offset-past-end": "EINVAL", "write-past-end": "ENOSPC",
		"trim-past-end": "EINVAL", "zero-past-end": "ENOSPC", "read-bad-flag": "EINVAL",
		"flush-bad-flag": "EINVAL", "write-unknown-flag": "EINVAL", "read-too-big": "EOVERFLOW", "alive": "OK",
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			got[f[0]] = f[1]
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("script output:\n%s", out)
	}
}
