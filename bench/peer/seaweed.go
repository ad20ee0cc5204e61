package peer

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// SeaweedFSOptions shapes a cluster.
type SeaweedFSOptions struct {
	// Dir holds every server's data and logs; it must exist.
	Dir string
	// VolumeServers is the number of volume servers (default 3).
	VolumeServers int
	// Replication is SeaweedFS's placement code for new volumes (default
	// "001": two copies on two servers of one rack, so any one volume
	// server may fail).
	Replication string
	// VolumeSizeLimitMB caps one volume file (default 256).
	VolumeSizeLimitMB int
}

// SeaweedFS is a running cluster: one master, VolumeServers volume
// servers, a filer and the S3 gateway, each its own process.
type SeaweedFS struct {
	Endpoint             string // the S3 gateway's base URL
	AccessKey, SecretKey string
	Dir                  string
	master               *proc
	volumes              []*proc
	filer                *proc
	gateway              *proc
}

// FindWeed returns the SeaweedFS binary: weed in PATH, else the one
// scripts/test builds into the cache.
func FindWeed() (string, error) {
	return findBinary("weed", filepath.Join(cacheDir(), "bin", "weed"))
}

// StartSeaweedFS starts a cluster on loopback and returns once its S3
// gateway answers and every volume server has joined.
func StartSeaweedFS(ctx context.Context, o SeaweedFSOptions) (_ *SeaweedFS, err error) {
	bin, err := FindWeed()
	if err != nil {
		return nil, err
	}
	if o.VolumeServers == 0 {
		o.VolumeServers = 3
	}
	if o.Replication == "" {
		o.Replication = "001"
	}
	if o.VolumeSizeLimitMB == 0 {
		o.VolumeSizeLimitMB = 256
	}
	// Every server has an HTTP and a gRPC port; the gateway two more
	// services we switch off.
	ports, err := freePorts(2*(o.VolumeServers+3) + 2)
	if err != nil {
		return nil, err
	}
	next := func() int { p := ports[0]; ports = ports[1:]; return p }
	c := &SeaweedFS{AccessKey: "volbacktest", SecretKey: "volbacktestsecret", Dir: o.Dir}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	sub := func(name string) (string, error) {
		d := filepath.Join(o.Dir, name)
		return d, os.MkdirAll(d, 0o700)
	}
	mport, mgrpc := next(), next()
	mdir, err := sub("master")
	if err != nil {
		return nil, err
	}
	masterAddr := fmt.Sprintf("127.0.0.1:%d.%d", mport, mgrpc)
	c.master = &proc{name: "seaweedfs master", bin: bin, log: filepath.Join(o.Dir, "master.log"),
		addr: fmt.Sprintf("127.0.0.1:%d", mport),
		args: []string{"-logdir=" + o.Dir, "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=" + strconv.Itoa(mport),
			"-port.grpc=" + strconv.Itoa(mgrpc), "-mdir=" + mdir, "-peers=none",
			"-defaultReplication=" + o.Replication, "-volumeSizeLimitMB=" + strconv.Itoa(o.VolumeSizeLimitMB)}}
	if err := c.master.start(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	for i := range o.VolumeServers {
		port, grpc := next(), next()
		dir, err := sub(fmt.Sprintf("volume%d", i))
		if err != nil {
			return nil, err
		}
		p := &proc{name: fmt.Sprintf("seaweedfs volume server %d", i), bin: bin,
			log: filepath.Join(o.Dir, fmt.Sprintf("volume%d.log", i)), addr: fmt.Sprintf("127.0.0.1:%d", port),
			args: []string{"-logdir=" + o.Dir, "volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=" + strconv.Itoa(port),
				"-port.grpc=" + strconv.Itoa(grpc), "-dir=" + dir, "-mserver=" + masterAddr, "-max=100",
				"-dataCenter=dc1", "-rack=rack1", "-minFreeSpace=64MiB"}}
		c.volumes = append(c.volumes, p)
		if err := p.start(ctx, 60*time.Second); err != nil {
			return nil, err
		}
	}
	if err := c.waitNodes(ctx, o.VolumeServers, 60*time.Second); err != nil {
		return nil, err
	}
	fport, fgrpc := next(), next()
	fdir, err := sub("filer")
	if err != nil {
		return nil, err
	}
	c.filer = &proc{name: "seaweedfs filer", bin: bin, log: filepath.Join(o.Dir, "filer.log"),
		addr: fmt.Sprintf("127.0.0.1:%d", fport),
		args: []string{"-logdir=" + o.Dir, "filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=" + strconv.Itoa(fport),
			"-port.grpc=" + strconv.Itoa(fgrpc), "-master=" + masterAddr, "-defaultStoreDir=" + fdir,
			"-localSocket=" + filepath.Join(o.Dir, "filer.sock")}}
	if err := c.filer.start(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	sport, sgrpc := next(), next()
	conf, err := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name":        "volback",
		"credentials": []any{map[string]string{"accessKey": c.AccessKey, "secretKey": c.SecretKey}},
		"actions":     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}})
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(o.Dir, "s3.json")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return nil, err
	}
	c.gateway = &proc{name: "seaweedfs s3 gateway", bin: bin, log: filepath.Join(o.Dir, "s3.log"),
		addr: fmt.Sprintf("127.0.0.1:%d", sport),
		args: []string{"-logdir=" + o.Dir, "s3", "-ip.bind=127.0.0.1", "-port=" + strconv.Itoa(sport), "-port.grpc=" + strconv.Itoa(sgrpc),
			"-port.iceberg=0", "-port.lance=0", "-filer=" + fmt.Sprintf("127.0.0.1:%d.%d", fport, fgrpc),
			"-config=" + confPath, "-localSocket=" + filepath.Join(o.Dir, "s3.sock")}}
	if err := c.gateway.start(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	c.Endpoint = "http://" + c.gateway.addr
	// The gateway listens before it has loaded its identities.
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Client().ListBuckets(cctx, &s3.ListBucketsInput{})
		cancel()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("seaweedfs s3 gateway at %s not ready: %w: %s", c.Endpoint, err, tail(c.gateway.log))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitNodes waits until the master counts n live volume servers.
func (c *SeaweedFS) waitNodes(ctx context.Context, n int, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var got int
	for {
		got = c.liveNodes(ctx)
		if got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("seaweedfs master sees %d volume servers, want %d: %s", got, n, tail(c.master.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// liveNodes asks the master how many volume servers it counts.
func (c *SeaweedFS) liveNodes(ctx context.Context) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.master.addr+"/dir/status", nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Topology struct {
			DataCenters []struct {
				Racks []struct {
					DataNodes []json.RawMessage
				}
			}
		}
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return -1
	}
	n := 0
	for _, dc := range st.Topology.DataCenters {
		for _, r := range dc.Racks {
			n += len(r.DataNodes)
		}
	}
	return n
}

// VolumeServers returns the number of volume servers.
func (c *SeaweedFS) VolumeServers() int { return len(c.volumes) }

// KillVolumeServer kills volume server i at once; its data stays.
func (c *SeaweedFS) KillVolumeServer(i int) { c.volumes[i].kill() }

// StartVolumeServer restarts volume server i on its ports and data, and
// waits until the master counts it again.
func (c *SeaweedFS) StartVolumeServer(ctx context.Context, i int) error {
	if c.volumes[i].running() {
		return nil
	}
	if err := c.volumes[i].start(ctx, 60*time.Second); err != nil {
		return err
	}
	live := 0
	for _, v := range c.volumes {
		if v.running() {
			live++
		}
	}
	return c.waitNodes(ctx, live, 60*time.Second)
}

// Client returns an S3 client for the gateway (test setup).
func (c *SeaweedFS) Client() *s3.Client {
	return s3Client(c.Endpoint, c.AccessKey, c.SecretKey)
}

// NewBucket creates a bucket.
func (c *SeaweedFS) NewBucket(ctx context.Context, name string) error {
	return newBucket(ctx, c.Client(), name)
}

// Logs returns the end of every server's log, for failure messages.
func (c *SeaweedFS) Logs() string {
	var s string
	for _, p := range append([]*proc{c.master, c.filer, c.gateway}, c.volumes...) {
		if p != nil {
			s += "== " + p.name + "\n" + tail(p.log) + "\n"
		}
	}
	return s
}

// Close kills every process of the cluster.
func (c *SeaweedFS) Close() {
	for _, p := range append([]*proc{c.gateway, c.filer}, c.volumes...) {
		if p != nil {
			p.kill()
		}
	}
	if c.master != nil {
		c.master.kill()
	}
}

func s3Client(endpoint, access, secret string) *s3.Client {
	return s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, ""),
	})
}

func newBucket(ctx context.Context, c *s3.Client, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}
