// Package qmptest starts qemu-storage-daemon processes for tests: a QMP
// socket, the block nodes a test asks for, and clean-up when the test
// ends.
package qmptest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/dataplane/qmp"
)

// Daemon is a running qemu-storage-daemon.
type Daemon struct {
	QMP  string // its QMP socket
	Dir  string // a private directory for its sockets and files
	cmd  *exec.Cmd
	log  string
	args []string
	t    testing.TB
}

// Require skips the test when qemu-storage-daemon is not installed.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-storage-daemon is missing (scripts/test installs qemu-system-common)")
		}
		t.Skip("qemu-storage-daemon is not installed")
	}
}

// Start runs qemu-storage-daemon with a QMP monitor and args (--blockdev,
// --nbd-server, --export ...), and waits for its QMP socket.
func Start(t testing.TB, args ...string) *Daemon {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	d := &Daemon{QMP: filepath.Join(dir, "qmp.sock"), Dir: dir, log: filepath.Join(dir, "qsd.log"), args: args, t: t}
	d.start()
	t.Cleanup(d.Stop)
	return d
}

func (d *Daemon) start() {
	d.t.Helper()
	all := append([]string{"--chardev", "socket,id=qmp0,path=" + d.QMP + ",server=on,wait=off", "--monitor", "chardev=qmp0"}, d.args...)
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd = exec.Command("qemu-storage-daemon", all...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logf.Close()
	// Ready when QMP answers: the daemon has then processed every option
	// (its block nodes, NBD server and exports exist).
	for i := 0; ; i++ {
		if _, err := os.Stat(d.QMP); err == nil && d.Execute("query-block-exports", nil, nil) == nil {
			return
		}
		if i > 1000 {
			d.Stop()
			b, _ := os.ReadFile(d.log)
			d.t.Fatalf("qemu-storage-daemon %s did not start:\n%s", strings.Join(all, " "), b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop ends the daemon cleanly (SIGTERM: persistent bitmaps are written
// out), waiting for it.
func (d *Daemon) Stop() {
	if d.cmd == nil || d.cmd.Process == nil || d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
	os.Remove(d.QMP)
}

// Kill ends the daemon abruptly, as a crash would.
func (d *Daemon) Kill() {
	if d.cmd != nil && d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
	os.Remove(d.QMP)
}

// Crash kills the daemon, as a crash would, and starts it again with the
// same arguments.
func (d *Daemon) Crash() {
	d.t.Helper()
	d.Kill()
	d.start()
}

// Restart stops the daemon and starts it again with the same arguments.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.Stop()
	d.start()
}

// Execute runs one QMP command on a connection of its own (a QMP socket
// serves one client at a time: none may be held across a test's other
// steps).
func (d *Daemon) Execute(cmd string, args, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, d.QMP, "")
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Execute(ctx, cmd, args, result)
}

// Log is what the daemon printed.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}
