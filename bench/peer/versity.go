package peer

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Versity is a versitygw S3 gateway over a directory.
type Versity struct {
	Endpoint             string
	AccessKey, SecretKey string
	Dir                  string // the buckets' parent directory
	p                    *proc
}

// FindVersity returns the versitygw binary: in PATH or Go's bin directory.
func FindVersity() (string, error) {
	return findBinary("versitygw", filepath.Join(goBin(), "versitygw"))
}

// StartVersity starts a gateway serving data (a directory that exists),
// logging into logDir.
func StartVersity(ctx context.Context, data, logDir string) (*Versity, error) {
	bin, err := FindVersity()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	v := &Versity{AccessKey: "volbacktest", SecretKey: "volbacktestsecret", Dir: data}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	v.Endpoint = "http://" + addr
	v.p = &proc{name: "versitygw", bin: bin, addr: addr, log: filepath.Join(logDir, "versitygw.log"),
		args: []string{"--access", v.AccessKey, "--secret", v.SecretKey, "--port", addr, "posix", data}}
	if err := v.Start(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// Start (re)starts the gateway on its address and directory.
func (v *Versity) Start(ctx context.Context) error {
	if v.p.running() {
		return nil
	}
	return v.p.start(ctx, 30*time.Second)
}

// Stop kills the gateway.
func (v *Versity) Stop() { v.p.kill() }

// Client returns an S3 client for the gateway (test setup).
func (v *Versity) Client() *s3.Client { return s3Client(v.Endpoint, v.AccessKey, v.SecretKey) }

// NewBucket creates a bucket.
func (v *Versity) NewBucket(ctx context.Context, name string) error {
	return newBucket(ctx, v.Client(), name)
}
