package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/apitest"
)

// testCerts writes a CA and a server and a client certificate it signed,
// under the file names qemu's tls-creds-x509 and libnbd's
// tls-certificates directory expect: ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem. The server's names
// are 127.0.0.1 and localhost.
func testCerts(t *testing.T) (dir string, pool *x509.CertPool) {
	t.Helper()
	dir = t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "volback test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	for i, who := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "volback test " + who},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
		if who == "server" {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			c.DNSNames = []string{"localhost"}
		} else {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, c, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		write(who+"-cert.pem", "CERTIFICATE", der)
		write(who+"-key.pem", "EC PRIVATE KEY", kder)
	}
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return dir, pool
}

// daemonExit runs the daemon with args and returns what it printed when it
// exits within a few seconds; a daemon still running is a failure.
func daemonExit(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(volbackBin, append([]string{"daemon", "--state-dir", t.TempDir()}, args...)...)
	done := make(chan struct{})
	var out []byte
	go func() { out, _ = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
		return string(out)
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("daemon %s kept running:\n%s", strings.Join(args, " "), out)
		return ""
	}
}

// TestListenRefusals: off loopback the API needs TLS (or --insecure) and a
// password of its own; NBD over TCP needs TLS (or --insecure).
func TestListenRefusals(t *testing.T) {
	port := strings.Split(freePort(t), ":")[1]
	if out := daemonExit(t, "--listen", "0.0.0.0:"+port, "--admin-password", "s3cret-pass"); !strings.Contains(out, "without TLS") {
		t.Errorf("API on 0.0.0.0 without TLS: %s", out)
	}
	if out := daemonExit(t, "--listen", "0.0.0.0:"+port, "--insecure"); !strings.Contains(out, "default admin password") {
		t.Errorf("API on 0.0.0.0 with the default password: %s", out)
	}
	if out := daemonExit(t, "--nbd-listen", "tcp://127.0.0.1:"+strings.Split(freePort(t), ":")[1]); !strings.Contains(out, "NBD") || !strings.Contains(out, "without TLS") {
		t.Errorf("NBD over TCP without TLS: %s", out)
	}
}

// TestLoginThrottling: 200 wrong passwords in a row from one address are
// checked only until the backoff starts, then refused unchecked with
// ZStack's error and Retry-After; the right password after the wait logs
// in, and the metric counts both kinds.
func TestLoginThrottling(t *testing.T) {
	d := startDaemon(t, filepath.Join(t.TempDir(), "state"))
	c := d.client()
	checked, throttled, retryAfter := 0, 0, 0
	start := time.Now()
	for i := 0; i < 200; i++ {
		req, _ := http.NewRequest("PUT", d.base+"/accounts/login", strings.NewReader(`{"logInByAccount":{"accountName":"admin","password":"`+strconv.Itoa(i)+`"}}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == 200:
			t.Fatalf("wrong password %d logged in", i)
		case strings.Contains(string(b), "too many failed logins"):
			throttled++
			if n, _ := strconv.Atoi(resp.Header.Get("Retry-After")); n > retryAfter {
				retryAfter = n
			}
		case strings.Contains(string(b), "wrong account name or password"):
			checked++
		default:
			t.Fatalf("login %d: %d %s", i, resp.StatusCode, b)
		}
		if !strings.Contains(string(b), `"code":"ID.1000"`) {
			t.Fatalf("login %d: not ZStack's error answer: %s", i, b)
		}
	}
	elapsed := time.Since(start)
	t.Logf("200 wrong logins in %s: %d checked, %d throttled, Retry-After up to %d s", elapsed.Round(time.Millisecond), checked, throttled, retryAfter)
	if checked > 10 || throttled < 190 {
		t.Fatalf("%d of 200 wrong passwords were checked, %d throttled", checked, throttled)
	}
	// Even the right password waits for the backoff...
	if r := c.LoginReply("password"); r.Status == 200 {
		t.Fatal("the right password got through during the backoff")
	}
	time.Sleep(time.Duration(retryAfter)*time.Second + 200*time.Millisecond)
	// ...and works after it.
	if r := c.LoginReply("password"); r.Status != 200 {
		t.Fatalf("login after the backoff: %d %s", r.Status, r.Body)
	}
	resp, err := http.Get(strings.TrimSuffix(d.base, "/zstack/v1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{fmt.Sprintf(`volback_login_failures_total{reason="password"} %d`, checked), `volback_login_failures_total{reason="throttled"}`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The daemon said at start that the default password is in use.
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "default password") {
		t.Errorf("no warning about the default password in the log:\n%s", b)
	}
}

// TestAPIOverTLS: --tls-cert/--tls-key serve HTTPS, TLS 1.3 only; plain
// HTTP and TLS 1.2 are refused; a job's location is the configured
// address, whatever Host header the client sent.
func TestAPIOverTLS(t *testing.T) {
	certs, pool := testCerts(t)
	addr := freePort(t)
	state := filepath.Join(t.TempDir(), "state")
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, _ := os.Create(logPath)
	cmd := exec.Command(volbackBin, "daemon", "--state-dir", state, "--listen", addr,
		"--tls-cert", filepath.Join(certs, "server-cert.pem"), "--tls-key", filepath.Join(certs, "server-key.pem"),
		"--api-url", "https://localhost:"+strings.Split(addr, ":")[1])
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitListen(t, addr, logPath)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c := &apitest.Client{T: t, Base: "https://" + addr + "/zstack/v1", HTTP: hc}
	c.Login("password")

	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
	if _, err := old.Get("https://" + addr + "/zstack/v1/api-jobs/x"); err == nil {
		t.Error("a TLS 1.2 client was served")
	}
	if resp, err := http.Get("http://" + addr + "/zstack/v1/api-jobs/x"); err == nil && resp.StatusCode < 400 {
		t.Errorf("plain HTTP was served: %d", resp.StatusCode)
	}
	store := filepath.Join(t.TempDir(), "store")
	r := c.Do("POST", "/backup-storage/image-store", "OAuth "+c.Session, `{"params":{"name":"s","url":"`+store+`"}}`, map[string]string{"Host": "evil.example.com"})
	if r.Status != 202 {
		t.Fatalf("AddImageStore: %d %s", r.Status, r.Body)
	}
	loc := r.JSON(t)["location"].(string)
	if !strings.HasPrefix(loc, "https://localhost:"+strings.Split(addr, ":")[1]+"/zstack/v1/api-jobs/") || strings.Contains(loc, "evil") {
		t.Fatalf("location %q is not built from the configured address", loc)
	}
	// The location itself works (the certificate names localhost).
	for i := 0; ; i++ {
		if r := c.Do("GET", loc, "", "", nil); r.Status == 200 {
			break
		} else if r.Status != 202 || i > 500 {
			t.Fatalf("poll %s: %d %s", loc, r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitListen(t *testing.T, addr, logPath string) {
	t.Helper()
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if i > 500 {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("daemon did not start:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNBDOverTLS: NBD over TCP requires STARTTLS with the daemon's X.509
// certificate and a client certificate from its CA: nbdinfo without TLS
// is refused, libnbd's tools and qemu-img with TLS read and write, and the
// Unix socket stays as it was.
func TestNBDOverTLS(t *testing.T) {
	requireTools(t, "nbdinfo", "nbdcopy", "qemu-img")
	certs, _ := testCerts(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.raw")
	mustRun(t, "bench", "image", "--size", "16MiB", img)
	const vol = "ab7196ba2d993236aceddd9b31f5d19b"
	nbdAddr := freePort(t)
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state, "--volume", vol+"="+img, "--nbd-listen", "tcp://"+nbdAddr,
		"--nbd-tls-cert", filepath.Join(certs, "server-cert.pem"), "--nbd-tls-key", filepath.Join(certs, "server-key.pem"),
		"--nbd-tls-ca", filepath.Join(certs, "ca-cert.pem"))
	plain := "nbd://" + nbdAddr + "/" + vol
	out, err := exec.Command("nbdinfo", plain).CombinedOutput()
	if err == nil {
		t.Fatalf("nbdinfo without TLS was served:\n%s", out)
	}
	t.Logf("nbdinfo without TLS: %s", strings.TrimSpace(string(out)))
	secure := "nbds://" + nbdAddr + "/" + vol + "?tls-certificates=" + certs
	if info := tool(t, time.Minute, "nbdinfo", "--size", secure); strings.TrimSpace(info) != strconv.Itoa(16<<20) {
		t.Fatalf("nbdinfo over TLS: %q", info)
	}
	// Write through TLS with nbdcopy, read it back with qemu-img over TLS.
	src := filepath.Join(dir, "src.raw")
	mustRun(t, "bench", "image", "--size", "16MiB", "--seed", "9", src)
	tool(t, time.Minute, "nbdcopy", src, secure)
	back := filepath.Join(dir, "back.raw")
	tool(t, time.Minute, "qemu-img", "convert", "-O", "raw",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certs,
		"--image-opts", fmt.Sprintf("driver=nbd,host=127.0.0.1,port=%s,export=%s,tls-creds=tls0", strings.Split(nbdAddr, ":")[1], vol), back)
	if !sameFiles(t, src, back) {
		t.Fatal("what qemu-img read over TLS differs from what nbdcopy wrote")
	}
	// A client without a certificate from the CA is refused.
	noClient := filepath.Join(dir, "ca-only")
	os.Mkdir(noClient, 0o700)
	ca, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	os.WriteFile(filepath.Join(noClient, "ca-cert.pem"), ca, 0o600)
	if out, err := exec.Command("nbdinfo", "nbds://"+nbdAddr+"/"+vol+"?tls-certificates="+noClient).CombinedOutput(); err == nil {
		t.Fatalf("a client without a certificate was served:\n%s", out)
	}
	// A client attached over TLS counts as attached: the volume cannot be
	// deleted under it (TLS connections were once never counted).
	release := holdNBD(t, secure)
	if r := d.do("DELETE", "/volumes/"+vol, "OAuth "+d.session, "", nil); r.status != 503 || zcode(t, r) != "SYS.1006" {
		t.Fatalf("delete of a volume attached over TLS: %d %s, want 503 SYS.1006", r.status, r.body)
	}
	release()
}

// TestPlantedSecretsNeverEchoed plants a secret in every place a
// credential might be slipped in (user info of an fsInfo url and of its
// endpoint= option, a secret-named option, an unknown tag, CLI repository
// URLs): each is refused by name, and the secret is found in no answer,
// no output, no log line and no file of the state directory.
func TestPlantedSecretsNeverEchoed(t *testing.T) {
	const planted = "PLANTEDsecret7f3a9"
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := startDaemon(t, state)
	store := filepath.Join(dir, "store")
	const bsUUID, volUUID = "3c4b0a3a24533c4faa9b156a0ef98fdf", "ac7196ba2d993236aceddd9b31f5d19b"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+store+`","resourceUuid":"`+bsUUID+`"}}`, nil); r.status != 200 {
		t.Fatalf("AddImageStore: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", `{"params":{"name":"v","diskSize":4194304,"resourceUuid":"`+volUUID+`"}}`, nil); r.status != 200 {
		t.Fatalf("CreateDataVolume: %d %s", r.status, r.body)
	}
	tags := []string{
		"fsInfo::type::s3::url::s3://bucket/p::options::endpoint=http://AKIAEXAMPLE:" + planted + "@127.0.0.1:9,path-style",
		"fsInfo::type::s3::url::http://user:" + planted + "@127.0.0.1:9/bucket/p",
		"fsInfo::type::s3::url::s3://bucket/p::options::secret-key=" + planted,
		"fsInfo::type::s3::url::s3://bucket/p::options::aws_secret_access_key=" + planted + ",region=r",
		"fsInfo::type::nfs::url::user:" + planted + "@127.0.0.1:/export",
		"s3::secretKey::" + planted,
	}
	var bodies []string
	for _, tag := range tags {
		tj, _ := json.Marshal([]string{tag})
		r := d.do("POST", "/volumes/"+volUUID+"/volume-backups", "OAuth "+d.session, `{"params":{"backupStorageUuid":"`+bsUUID+`","name":"b"},"systemTags":`+string(tj)+`}`, nil)
		if r.status == 202 || r.status == 200 {
			t.Errorf("backup with tag %q accepted", target.Redact(tag))
		}
		bodies = append(bodies, string(r.body))
		// The same as a storage's default tags.
		r = d.do("POST", "/backup-storage/image-store", "OAuth "+d.session, `{"params":{"name":"s2","url":"`+filepath.Join(dir, "store2")+`"},"systemTags":`+string(tj)+`}`, nil)
		if r.status == 202 || r.status == 200 {
			t.Errorf("storage with tag %q accepted", target.Redact(tag))
		}
		bodies = append(bodies, string(r.body))
	}
	for i, b := range bodies {
		if strings.Contains(b, planted) {
			t.Errorf("answer %d echoes the secret: %s", i, b)
		}
	}
	if !strings.Contains(bodies[0], "credentials do not belong") {
		t.Errorf("the refusal does not say why: %s", bodies[0])
	}
	// The CLI refuses the same in repository URLs, naming no secret.
	for _, u := range []string{
		"s3://bucket/p?endpoint=http://AK:" + planted + "@127.0.0.1:9&path-style",
		"s3://bucket/p?secret-key=" + planted,
		"nfs://user:" + planted + "@127.0.0.1/export",
		"http://user:" + planted + "@127.0.0.1:9/bucket",
	} {
		r := run(t, "ls", "--repo", u)
		if r.code == 0 || strings.Contains(r.stdout+r.stderr, planted) {
			t.Errorf("ls --repo %s: exit %d, printed %q", target.Redact(u), r.code, r.stdout+r.stderr)
		}
	}
	d.stop()
	for _, root := range []string{state, filepath.Dir(d.logPath), store} {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			if b, _ := os.ReadFile(p); strings.Contains(string(b), planted) {
				t.Errorf("%s holds the planted secret", p)
			}
			return nil
		})
	}
}
