package main

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestKernel finds a kernel for the test guest: VOLBACK_GUEST_KERNEL,
// else the one scripts/test unpacks into its cache.
func guestKernel(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("VOLBACK_GUEST_KERNEL"); k != "" {
		return k
	}
	cache, _ := os.UserCacheDir()
	ks, _ := filepath.Glob(filepath.Join(cache, "volback", "vmlinuz-*"))
	if len(ks) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no guest kernel: scripts/test unpacks one into ~/.cache/volback")
		}
		t.Skip("no guest kernel (scripts/test unpacks one into ~/.cache/volback, or set VOLBACK_GUEST_KERNEL)")
	}
	return ks[len(ks)-1]
}

// guest is a QEMU guest (TCG) whose disk is a volume's NBD export and
// whose init writes numbered, checksummed blocks (testdata/guestinit).
type guest struct {
	t   *testing.T
	cmd *exec.Cmd
	log string
}

func startGuest(t *testing.T, sock, export string) *guest {
	t.Helper()
	// reconnect-delay: while the daemon restarts, the guest's I/O waits
	// instead of failing.
	return startGuestWith(t, "-drive", "driver=nbd,server.type=unix,server.path="+sock+",export="+export+",if=none,id=d0,cache.direct=on,reconnect-delay=30",
		"-device", "nvme,drive=d0,serial=volback")
}

// startGuestWith boots the test guest with the given disk (and other)
// arguments; its disk must appear as /dev/nvme0n1.
func startGuestWith(t *testing.T, args ...string) *guest {
	t.Helper()
	requireTools(t, "qemu-system-x86_64", "cpio")
	kernel := guestKernel(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "init"), "../../testdata/guestinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the guest's init: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initrd")
	mk := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+initrd)
	mk.Dir = root
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}
	g := &guest{t: t, log: filepath.Join(dir, "console.log")}
	g.cmd = exec.Command("qemu-system-x86_64", append([]string{"-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:" + g.log, "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 rdinit=/init panic=-1 quiet"}, args...)...)
	var stderr bytes.Buffer
	g.cmd.Stderr = &stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		_ = g.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(g.log)
			t.Logf("guest console:\n%s\nqemu: %s", tail(string(b), 2000), stderr.String())
		}
	})
	g.waitAck(0, 2*time.Minute)
	return g
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var ackRE = regexp.MustCompile(`(?m)^ack (\d+)`)

// acked returns the highest block the guest acknowledged (-1 for none),
// failing the test on any I/O error the guest saw.
func (g *guest) acked() int64 {
	g.t.Helper()
	b, _ := os.ReadFile(g.log)
	if i := bytes.Index(b, []byte("\nerror")); i >= 0 {
		g.t.Fatalf("the guest saw an I/O error: %s", strings.SplitN(string(b[i+1:]), "\n", 2)[0])
	}
	last := int64(-1)
	for _, m := range ackRE.FindAllSubmatch(b, -1) {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		last = max(last, n)
	}
	return last
}

// waitAck waits until the guest acknowledged beyond block n.
func (g *guest) waitAck(n int64, within time.Duration) int64 {
	g.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if a := g.acked(); a > n {
			return a
		}
		if g.cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(g.log)
			g.t.Fatalf("the guest acknowledged nothing beyond block %d in %s:\n%s", n, within, tail(string(b), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkPrefix checks that an image holds the guest's blocks 0..k-1 and
// zeros after, with k > acked, and returns k.
func checkPrefix(t *testing.T, path string, acked int64) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const bs = 4096
	valid := func(blk []byte, seq int64) bool {
		return binary.LittleEndian.Uint64(blk) == 0x766f6c6261636b21 && binary.LittleEndian.Uint64(blk[8:]) == uint64(seq) &&
			binary.LittleEndian.Uint32(blk[bs-4:]) == crc32.ChecksumIEEE(blk[:bs-4])
	}
	k := int64(0)
	for ; (k+1)*bs <= int64(len(b)) && valid(b[k*bs:(k+1)*bs], k); k++ {
	}
	for j := k; (j+1)*bs <= int64(len(b)); j++ {
		if !bytes.Equal(b[j*bs:(j+1)*bs], make([]byte, bs)) {
			t.Fatalf("%s: block %d after the prefix of %d blocks is not empty: not a state the guest's disk was ever in", path, j, k)
		}
	}
	if k <= acked {
		t.Fatalf("%s: %d blocks, but the guest had acknowledged block %d before the backup", path, k, acked)
	}
	return k
}

// TestGuestLiveBackup: a QEMU guest writes ordered, checksummed blocks
// with O_DIRECT and fdatasync to a volume's export. Live full and
// incremental backups taken while it writes each restore to a prefix of
// its writes holding every block acknowledged before the backup; a
// restart of the daemon under the writing guest costs it a pause, never
// an I/O error, and the next backup is still incremental.
func TestGuestLiveBackup(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	const vol = "9e4a5c88b7cf4f62d35e1a7b6f0d2c03"
	d := startDaemon(t, state)
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"guest","diskSize":67108864,"resourceUuid":"`+vol+`"}}`, nil); r.status != 200 {
		t.Fatalf("create volume: %d %s", r.status, r.body)
	}
	bs := d.do("GET", "/backup-storage", "OAuth "+d.session, "", nil).obj(t)["inventories"].([]any)[0].(map[string]any)["uuid"].(string)
	g := startGuest(t, filepath.Join(state, "nbd.sock"), vol)
	store := filepath.Join(state, "imagestore")

	backup := func(name, wantMode string) (int64, int64) {
		t.Helper()
		before := g.acked()
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", backupBody(bs, name, ""), nil)
		if r.status != 200 {
			t.Fatalf("backup %s: %d %s", name, r.status, r.body)
		}
		inv := r.obj(t)["inventory"].(map[string]any)
		if md := metadata(t, inv); md["mode"] != wantMode {
			t.Errorf("backup %s: mode %v (%v), want %s", name, md["mode"], md["fullReason"], wantMode)
		}
		out := filepath.Join(t.TempDir(), name+".raw")
		mustRun(t, "restore", "--repo", store, inv["uuid"].(string), out)
		k := checkPrefix(t, out, before)
		_ = os.Remove(out)
		return before, k
	}
	a, k := backup("full", "full")
	t.Logf("full: acknowledged %d before, restored %d blocks", a, k)
	g.waitAck(k+32, 2*time.Minute)
	a, k = backup("incremental", "incremental")
	t.Logf("incremental: acknowledged %d before, restored %d blocks", a, k)

	// The daemon restarts under the writing guest.
	before := g.acked()
	d.stop()
	d = startDaemon(t, state)
	after := g.waitAck(before+32, 2*time.Minute)
	t.Logf("restart: the guest went on from block %d to %d with no I/O error", before, after)
	a, k = backup("after-restart", "incremental")
	t.Logf("after the restart: acknowledged %d before, restored %d blocks", a, k)
	g.acked() // no error since
}
