package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volback/volback/control"
)

// requireTools skips the test when a peer tool is missing, except in CI
// (CI=true), where scripts/test installs every peer and a missing one is a
// failure.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; scripts/test installs it", tool)
			}
			t.Skipf("%s is not installed (scripts/test installs it)", tool)
		}
	}
}

// requirePythonNBD needs libnbd's Python module (Debian's python3-libnbd)
// under /usr/bin/python3.
func requirePythonNBD(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/python3/dist-packages/nbd.py"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("libnbd's Python module is not installed; scripts/test installs python3-libnbd")
		}
		t.Skip("libnbd's Python module is not installed (scripts/test installs python3-libnbd)")
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (loop devices, mounts)")
		}
		t.Skip("needs root")
	}
}

type served struct {
	t        *testing.T
	stateDir string
	cmd      *exec.Cmd
	log      *os.File
}

// serve starts `volback serve` with the given volumes and waits until it
// listens. The test's cleanup stops it with SIGTERM and checks that it
// shut down cleanly.
func serve(t *testing.T, vols map[string]string, extra ...string) *served {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	args := []string{"serve", "--state-dir", state}
	ids := make([]string, 0, len(vols))
	for id := range vols {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		args = append(args, "--volume", id+"="+vols[id])
	}
	return startServe(t, state, append(args, extra...))
}

func startServe(t *testing.T, state string, args []string) *served {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(volbackBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{t: t, stateDir: state, cmd: cmd, log: logf}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Ready when the admin socket answers (a socket file alone may
		// be a stale one from a killed server).
		if c, err := net.Dial("unix", filepath.Join(state, "control.sock")); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("volback serve did not start:\n%s", s.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.stop()
		}
	})
	return s
}

func (s *served) logText() string {
	b, _ := os.ReadFile(s.log.Name())
	return string(b)
}

// stop sends SIGTERM and requires a clean exit.
func (s *served) stop() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			s.t.Errorf("volback serve exited with %v:\n%s", err, s.logText())
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		s.t.Errorf("volback serve did not stop within 30 s of SIGTERM")
	}
}

// kill stops the server with SIGKILL, as a crash would.
func (s *served) kill() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

func (s *served) socket() string { return filepath.Join(s.stateDir, "nbd.sock") }

func (s *served) uri(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, s.socket())
}

// backup runs a live backup of volume id into repo through the CLI.
func (s *served) backup(repo, id string, extra ...string) control.LocalBackupReply {
	s.t.Helper()
	args := append([]string{"--json", "backup", "--live", "--state-dir", s.stateDir, "--repo", repo}, extra...)
	r := mustRun(s.t, append(args, id)...)
	var reply control.LocalBackupReply
	if err := json.Unmarshal([]byte(r.stdout), &reply); err != nil {
		s.t.Fatalf("backup --live --json printed %q: %v", r.stdout, err)
	}
	return reply
}

// tool runs an external program with a deadline, so a hang fails the test
// instead of stalling it.
func tool(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no answer within %s (hang)", name, strings.Join(args, " "), timeout)
	}
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// holdNBD connects libnbd's Python module (nbdsh's engine) to uri and
// returns once its handshake is done, holding the connection until the
// returned function is called.
func holdNBD(t *testing.T, uri string) (release func()) {
	t.Helper()
	requirePythonNBD(t)
	hold := exec.Command("/usr/bin/python3", "-c", "import nbd, sys\nh = nbd.NBD()\nh.set_uri_allow_local_file(True)\nh.connect_uri(sys.argv[1])\nprint('attached', flush=True)\nsys.stdin.read()", uri)
	in, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := hold.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	hold.Stderr = &stderr
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "attached\n" {
		in.Close()
		hold.Wait()
		t.Fatalf("python3 nbd connect to %s: %q %s", uri, line, stderr.String())
	}
	var once sync.Once
	release = func() { once.Do(func() { in.Close(); hold.Wait() }) }
	t.Cleanup(release)
	return release
}
