package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/nbd"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// serve starts a server process that listens on sock and waits for it.
func serve(t *testing.T, sock string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if i > 500 {
			t.Fatalf("%s did not start: %s", name, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialT(t *testing.T, sock, export string, opts nbd.ClientOptions) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "unix", sock, export, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientAgainstQemuNBD: reads, writes, flush, zeroes and block status
// (base:allocation and a qcow2 dirty bitmap) against qemu-nbd, with many
// requests in flight.
func TestClientAgainstQemuNBD(t *testing.T) {
	need(t, "qemu-nbd", "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "32M")
	sh(t, "qemu-img", "bitmap", "--add", img, "b0")
	sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0x11 20M 64k", img)
	sock := filepath.Join(dir, "s")
	serve(t, sock, "qemu-nbd", "-k", sock, "-f", "qcow2", "-t", "-B", "b0", "-x", "disk", img)
	ctx := context.Background()
	c := dialT(t, sock, "disk", nbd.ClientOptions{MetaContexts: []string{"base:allocation", "qemu:dirty-bitmap:b0"}})
	if c.Size() != 32<<20 || c.ReadOnly() {
		t.Fatalf("size %d, read-only %v", c.Size(), c.ReadOnly())
	}
	got := make([]byte, 5<<20)
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 5<<20)
	copy(want[1<<20:4<<20], bytes.Repeat([]byte{0x5a}, 3<<20))
	if !bytes.Equal(got, want) {
		t.Fatal("read differs from what qemu-io wrote")
	}
	dirty := map[string][][2]int64{}
	pos := map[string]int64{}
	if err := c.BlockStatus(ctx, 0, c.Size(), func(ctxName string, length int64, flags uint32) {
		if ctxName == "qemu:dirty-bitmap:b0" && flags&nbd.StateDirty != 0 {
			dirty[ctxName] = append(dirty[ctxName], [2]int64{pos[ctxName], length})
		}
		pos[ctxName] += length
	}); err != nil {
		t.Fatal(err)
	}
	d := dirty["qemu:dirty-bitmap:b0"]
	if len(d) != 2 || d[0] != [2]int64{1 << 20, 3 << 20} || d[1][0] != 20<<20 {
		t.Fatalf("dirty extents %v", d)
	}
	// Writes, zeroes and a flush; then 64 concurrent reads check them.
	src := make([]byte, 8<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	if err := c.WriteAt(ctx, src, 8<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Zero(ctx, 9<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(src[1<<20 : 2<<20])
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			off := int64(i) * 128 << 10
			b := make([]byte, 128<<10)
			if err := c.ReadAt(ctx, b, 8<<20+off); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(b, src[off:off+int64(len(b))]) {
				errs <- os.ErrInvalid
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent read: %v", err)
	}
	// Out of range is refused before it is sent.
	if err := c.ReadAt(ctx, make([]byte, 10), c.Size()-5); err == nil {
		t.Error("a read past the end was sent")
	}
}

// TestClientAgainstNbdkit: a sparse export read with structured replies
// (holes come as OFFSET_HOLE), writes larger than one request, and an
// unknown export refused by name.
func TestClientAgainstNbdkit(t *testing.T) {
	need(t, "nbdkit")
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	serve(t, sock, "nbdkit", "-f", "-U", sock, "memory", "96M")
	ctx := context.Background()
	c := dialT(t, sock, "", nbd.ClientOptions{Structured: true})
	data := bytes.Repeat([]byte("volback nbd client "), (40<<20)/19+1)[:40<<20]
	if err := c.WriteAt(ctx, data, 50<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 96<<20)
	for i := range got {
		got[i] = 0xff
	}
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:50<<20], make([]byte, 50<<20)) || !bytes.Equal(got[50<<20:90<<20], data) || !bytes.Equal(got[90<<20:], make([]byte, 6<<20)) {
		t.Fatal("read back differs")
	}
	if _, err := nbd.Dial(ctx, "unix", sock, "no-such", nbd.ClientOptions{}); err != nil && !strings.Contains(err.Error(), "no-such") {
		t.Fatalf("unknown export: %v", err)
	}
}
