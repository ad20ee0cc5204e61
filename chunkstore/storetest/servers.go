package storetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/volback/volback/bench/peer"
)

// need finds a server binary. Under CI=true a missing one fails the test
// (the test command installs them); elsewhere the test is skipped with the
// reason.
func need(t testing.TB, name string, extra ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range extra {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("%s is not installed (scripts/test installs it)", name)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a TCP port nobody listens on at the moment.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListening(t testing.TB, addr string, d time.Duration, dead func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) || (dead != nil && dead()) {
			t.Fatalf("server at %s did not start: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ganesha is an NFS-Ganesha server exporting one directory over NFSv3 on
// loopback, on ports of its own so tests may run several at once. Clients
// give the ports as mount options (Options), so the portmapper's view,
// shared by all instances, does not matter.
type Ganesha struct {
	Export    string // exported directory (also its path on the server)
	Port      int
	MountPort int
	dir       string
	bin       string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// StartGanesha starts a server for the test; it is stopped at cleanup.
func StartGanesha(t testing.TB) *Ganesha {
	t.Helper()
	bin := need(t, "ganesha.nfsd", "/usr/bin/ganesha.nfsd")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("NFS-Ganesha needs root, and CI runs as root")
		}
		t.Skip("NFS-Ganesha needs root")
	}
	// Ganesha registers with the portmapper at start; give it one.
	if out, err := exec.Command("pgrep", "-x", "rpcbind").Output(); err != nil || len(out) == 0 {
		rb := need(t, "rpcbind", "/usr/sbin/rpcbind", "/sbin/rpcbind")
		if out, err := exec.Command(rb, "-w").CombinedOutput(); err != nil {
			t.Fatalf("rpcbind: %v %s", err, out)
		}
	}
	dir := t.TempDir()
	g := &Ganesha{Export: filepath.Join(dir, "export"), dir: dir, bin: bin, Port: FreePort(t), MountPort: FreePort(t)}
	if err := os.Mkdir(g.Export, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`NFS_CORE_PARAM {
	Protocols = 3;
	Bind_addr = 127.0.0.1;
	NFS_Port = %d;
	MNT_Port = %d;
	Enable_NLM = false;
	Enable_RQUOTA = false;
}
NFSV4 { Graceless = true; RecoveryBackend = fs; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
	Export_Id = 1;
	Path = %s;
	Pseudo = %s;
	Access_Type = RW;
	Squash = No_Root_Squash;
	Protocols = 3;
	Transports = TCP;
	FSAL { Name = VFS; }
}
`, g.Port, g.MountPort, g.Export, g.Export)
	if err := os.WriteFile(filepath.Join(dir, "ganesha.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	g.Start(t)
	t.Cleanup(g.Stop)
	return g
}

// Start (re)starts the server on the same ports and export.
func (g *Ganesha) Start(t testing.TB) {
	t.Helper()
	g.cmd = exec.Command(g.bin, "-F", "-f", filepath.Join(g.dir, "ganesha.conf"), "-L", filepath.Join(g.dir, "ganesha.log"),
		"-p", filepath.Join(g.dir, "ganesha.pid"), "-N", "NIV_EVENT")
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { _ = c.Wait(); close(ch) }(g.cmd, g.exited)
	dead := func() bool {
		select {
		case <-g.exited:
			return true
		default:
			return false
		}
	}
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", g.MountPort), 30*time.Second, dead)
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", g.Port), 30*time.Second, dead)
}

// Stop kills the server (as a crash or a pulled cable would look).
func (g *Ganesha) Stop() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	_ = g.cmd.Process.Kill()
	<-g.exited
	g.cmd = nil
}

// Log returns the server's log, for failure messages.
func (g *Ganesha) Log() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "ganesha.log"))
	return string(b)
}

// URL returns the fsInfo url of a path inside the export.
func (g *Ganesha) URL(sub string) string {
	return "127.0.0.1:" + filepath.Join(g.Export, sub)
}

// Options returns mount options naming the server's ports, with short
// timeouts so fault tests end quickly.
func (g *Ganesha) Options() string {
	return fmt.Sprintf("vers=3,nolock,proto=tcp,port=%d,mountport=%d,timeo=20,retrans=2", g.Port, g.MountPort)
}

// S3Server is a versitygw S3 gateway over a directory, on loopback.
type S3Server struct {
	Endpoint             string
	AccessKey, SecretKey string
	Dir                  string
	v                    *peer.Versity
}

// StartS3 starts a versitygw for the test; it is stopped at cleanup.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	v, err := peer.StartVersity(context.Background(), t.TempDir(), t.TempDir())
	if err != nil {
		missing(t, err)
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	return &S3Server{Endpoint: v.Endpoint, AccessKey: v.AccessKey, SecretKey: v.SecretKey, Dir: v.Dir, v: v}
}

// missing skips the test (or fails it under CI=true) if err says a
// server's binary is not installed.
func missing(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, peer.ErrNotInstalled) {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(err)
	}
	t.Skip(err)
}

// Start (re)starts the gateway on the same address and directory.
func (s *S3Server) Start(t testing.TB) {
	t.Helper()
	if err := s.v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Stop kills the gateway.
func (s *S3Server) Stop() { s.v.Stop() }

// StartSeaweedFS starts a SeaweedFS cluster for the test (one master,
// three volume servers with every volume on two of them, a filer, the S3
// gateway); it is stopped at cleanup.
func StartSeaweedFS(t testing.TB) *peer.SeaweedFS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := peer.StartSeaweedFS(ctx, peer.SeaweedFSOptions{Dir: t.TempDir()})
	if err != nil {
		missing(t, err)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
		c.Close()
	})
	return c
}

// Client returns an S3 client for the gateway, for test setup.
func (s *S3Server) Client() *s3.Client { return s.v.Client() }

// NewBucket creates a bucket.
func (s *S3Server) NewBucket(t testing.TB, name string) {
	t.Helper()
	if err := s.v.NewBucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// Env returns environment variables that give the standard AWS chain the
// gateway's credentials.
func (s *S3Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true"}
}
