package nbd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nbd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// TestAttachedCountedBeforeTheClientKnows: ConnectionsTo counts a client
// as attached by the time its handshake returns, over a plain socket and
// over TLS, so a delete or revert that checks it cannot slip in after a
// client believes it is attached. (The TLS connection was once recorded
// under its *tls.Conn, which the server's table does not hold, and never
// counted.)
func TestAttachedCountedBeforeTheClientKnows(t *testing.T) {
	ctx := context.Background()
	srv, sock, _ := startServer(t, 1<<20)
	for i := range 20 {
		c, err := Dial(ctx, "unix", sock, "vol", ClientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n := srv.ConnectionsTo("vol"); n != 1 {
			t.Fatalf("dial %d: ConnectionsTo(vol) = %d right after the handshake, want 1", i, n)
		}
		c.Close()
		for deadline := time.Now().Add(10 * time.Second); srv.ConnectionsTo("vol") != 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("a closed connection is still counted")
			}
		}
	}

	cert, pool := selfSigned(t)
	tsrv := NewServer()
	tsrv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	tsrv.AddExport(&Export{Name: "vol", Backend: &memBackend{data: make([]byte, 1<<20)}})
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { tsrv.Serve(sctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c, err := Dial(ctx, "tcp", l.Addr().String(), "vol", ClientOptions{TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := tsrv.ConnectionsTo("vol"); n != 1 {
		t.Fatalf("over TLS: ConnectionsTo(vol) = %d once attached, want 1", n)
	}
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read over TLS: %v", err)
	}
}
