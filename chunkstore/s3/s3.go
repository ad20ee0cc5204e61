package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"

	"github.com/volback/volback/chunkstore"
)

// Options configures a Store.
type Options struct {
	Bucket string
	// Prefix is prepended (with a slash) to every object name; "" = the
	// bucket's root.
	Prefix string
	// Endpoint is the S3 service's base URL ("" = AWS for Region).
	Endpoint string
	// Region; "" = the profile's or environment's, else us-east-1.
	Region string
	// PathStyle addresses buckets as ENDPOINT/BUCKET rather than
	// BUCKET.ENDPOINT (most S3-compatible servers want it).
	PathStyle bool
	// StorageClass of new objects ("" = the bucket's default).
	StorageClass string
	// Profile names a shared-config profile to take credentials and
	// region from; "" = the standard chain (environment, shared config,
	// instance role).
	Profile string
	// AccessKeyID and SecretAccessKey, if set, are used instead of the
	// chain (the daemon's own configuration).
	AccessKeyID, SecretAccessKey string
	// InstanceMetadata lets the credential chain (and region lookup) ask
	// the EC2 instance-metadata service, 169.254.169.254. Off unless a
	// target asks (option instance-metadata): a hypervisor host outside
	// EC2 must not probe a link-local address, nor wait on it.
	InstanceMetadata bool
	// LocalAddr, if valid, is the source address of every connection.
	LocalAddr netip.Addr
	// MaxAttempts per request, retries included (default 6): throttling,
	// 5xx answers and broken connections are retried with jittered
	// exponential backoff; other 4xx answers are not.
	MaxAttempts int
	// MaxBackoff between attempts (default 5 s).
	MaxBackoff time.Duration
	// Timeout bounds how long a connection may make no progress (dialling,
	// waiting for an answer, sending or receiving a body) before the
	// request fails, so a server that accepts connections and then stalls
	// fails the backup instead of hanging it (default 60 s).
	Timeout time.Duration
	// ConditionalOnly makes exclusive creates (repository config,
	// manifests, key slots) trust the server's If-None-Match alone. By
	// default each takes a claim first (chunkstore.ClaimCreate), which
	// stays exclusive on engines that answer every racing conditional put
	// with success, for one PUT, one LIST, one HEAD and one DELETE more
	// per create. For engines verified to enforce it under concurrency.
	ConditionalOnly bool
	// APIOptions are added to the S3 client's middleware (tests: a server
	// that ignores a header is emulated by removing it).
	APIOptions []func(*middleware.Stack) error
	// HTTPClient replaces the default client (tests); LocalAddr and
	// Timeout are then the caller's business.
	HTTPClient aws.HTTPClient
}

// DefaultTimeout is Options.Timeout's default.
const DefaultTimeout = 60 * time.Second

// idleConn fails a read or write that makes no progress for timeout.
type idleConn struct {
	net.Conn
	timeout time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// Store is a chunkstore.Store on an S3 bucket.
type Store struct {
	c     *s3.Client
	o     Options
	loc   string
	noCAS atomic.Bool // the server does not implement If-None-Match
}

var (
	_ chunkstore.Store        = (*Store)(nil)
	_ chunkstore.BufferGetter = (*Store)(nil)
)

// Open connects to the bucket and checks that it is reachable.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 6
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	s := &Store{o: o, loc: location(o)}
	var httpClient aws.HTTPClient
	if o.HTTPClient == nil {
		d := &net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}
		if o.LocalAddr.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: o.LocalAddr.AsSlice()}
		}
		httpClient = awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			// Many workers share one client: keep their connections.
			t.MaxIdleConns = 256
			t.MaxIdleConnsPerHost = 64
			t.ResponseHeaderTimeout = o.Timeout
			t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &idleConn{Conn: c, timeout: o.Timeout}, nil
			}
		})
	}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = o.MaxAttempts
				so.MaxBackoff = o.MaxBackoff
				// No client-side retry budget: a backup must ride out a
				// throttling storm, slowed by the backoff.
				so.RateLimiter = ratelimit.None
			})
		}),
	}
	if httpClient != nil {
		loadOpts = append(loadOpts, config.WithHTTPClient(httpClient))
	}
	if !o.InstanceMetadata {
		loadOpts = append(loadOpts, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	if o.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(o.Profile))
	}
	if o.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.Region))
	}
	if o.AccessKeyID != "" {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("%s: load AWS configuration: %w", s.loc, err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	s.c = s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
		if o.HTTPClient != nil {
			so.HTTPClient = o.HTTPClient
		}
		so.APIOptions = append(so.APIOptions, o.APIOptions...)
	})
	if _, err := s.c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(o.Bucket)}); err != nil {
		return nil, s.wrap("open bucket", err)
	}
	return s, nil
}

func location(o Options) string {
	l := "s3://" + o.Bucket
	if o.Prefix != "" {
		l += "/" + o.Prefix
	}
	if o.Endpoint != "" {
		l += " at " + o.Endpoint
	}
	return l
}

// Location names the bucket, prefix and endpoint.
func (s *Store) Location() string { return s.loc }

func (s *Store) key(name string) string {
	if s.o.Prefix == "" {
		return name
	}
	return s.o.Prefix + "/" + name
}

// status returns the HTTP status of a failed request, or 0.
func status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// wrap names the target and classifies err: not found, transient (what the
// SDK retries: throttling, 5xx, broken connections, once its attempts are
// spent) or permanent (any other 4xx, bad configuration).
func (s *Store) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %s: %w", s.loc, op, err)
	}
	code, st := apiCode(err), status(err)
	switch {
	case code == "NoSuchKey" || code == "NotFound" || (st == 404 && code != "NoSuchBucket"):
		return fmt.Errorf("%s: %s: %w", s.loc, op, chunkstore.ErrNotFound)
	case st == 429 || st >= 500 || st == 0 || retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err).Bool():
		return chunkstore.Transient(fmt.Errorf("%s: %s: %w", s.loc, op, err))
	default:
		return fmt.Errorf("%s: %s: %w", s.loc, op, err)
	}
}

// Put stores data, replacing any object of that name.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := chunkstore.ValidName(name); err != nil {
		return err
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.o.Bucket),
		Key:           aws.String(s.key(name)),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	}
	if s.o.StorageClass != "" {
		in.StorageClass = types.StorageClass(s.o.StorageClass)
	}
	_, err := s.c.PutObject(ctx, in)
	return s.wrap("put "+name, err)
}

// PutIfAbsent stores data only if name does not exist, else returns
// chunkstore.ErrExists: a conditional create (If-None-Match: *), inside a
// claim (chunkstore.ClaimCreate) unless Options.ConditionalOnly is set and
// the server has conditional puts.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	if err := chunkstore.ValidName(name); err != nil {
		return err
	}
	if s.o.ConditionalOnly {
		if err := s.create(ctx, name, data, false); !errors.Is(err, errNoCAS) {
			return err
		}
	}
	return chunkstore.ClaimCreate(ctx, s, name, func(ctx context.Context) error { return s.create(ctx, name, data, true) })
}

// errNoCAS: the server has no conditional put (remembered in noCAS).
var errNoCAS = errors.New("conditional put not implemented")

// create is one conditional put. On a server without them it returns
// errNoCAS, unless the caller holds a claim on name (claimed), which makes
// a plain put safe.
func (s *Store) create(ctx context.Context, name string, data []byte, claimed bool) error {
	in := &s3.PutObjectInput{
		Bucket: aws.String(s.o.Bucket), Key: aws.String(s.key(name)),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	}
	if s.o.StorageClass != "" {
		in.StorageClass = types.StorageClass(s.o.StorageClass)
	}
	if !s.noCAS.Load() {
		in.IfNoneMatch = aws.String("*")
		_, err := s.c.PutObject(ctx, in)
		switch st := status(err); {
		case err == nil:
			return nil
		case st == http.StatusPreconditionFailed || st == http.StatusConflict || apiCode(err) == "ConditionalRequestConflict":
			return fmt.Errorf("%s: %s: %w", s.loc, name, chunkstore.ErrExists)
		case st == http.StatusNotImplemented || apiCode(err) == "NotImplemented":
			s.noCAS.Store(true)
		default:
			return s.wrap("create "+name, err)
		}
	}
	if !claimed {
		return errNoCAS
	}
	in.IfNoneMatch = nil
	in.Body = bytes.NewReader(data)
	_, err := s.c.PutObject(ctx, in)
	return s.wrap("create "+name, err)
}

// Get reads an object whole.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter: an object of known length
// that fits buf is read into it, any other grows a buffer of its own.
func (s *Store) GetBuffer(ctx context.Context, name string, into []byte) ([]byte, error) {
	if err := chunkstore.ValidName(name); err != nil {
		return nil, err
	}
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.o.Bucket), Key: aws.String(s.key(name))})
	if err != nil {
		return nil, s.wrap("get "+name, err)
	}
	defer out.Body.Close()
	n := aws.ToInt64(out.ContentLength)
	if n < 0 || n > 1<<31 {
		n = 0
	}
	if out.ContentLength != nil && n > 0 && int(n) <= cap(into) {
		b := into[:n]
		if _, err := io.ReadFull(out.Body, b); err != nil {
			return nil, chunkstore.Transient(fmt.Errorf("%s: get %s: %w", s.loc, name, err))
		}
		// The body must end where its length said.
		var extra [1]byte
		if m, _ := out.Body.Read(extra[:]); m != 0 {
			return nil, chunkstore.Transient(fmt.Errorf("%s: get %s: more than the %d bytes announced", s.loc, name, n))
		}
		return b, nil
	}
	buf := bytes.NewBuffer(make([]byte, 0, n))
	if _, err := io.Copy(buf, out.Body); err != nil {
		return nil, chunkstore.Transient(fmt.Errorf("%s: get %s: %w", s.loc, name, err))
	}
	if out.ContentLength != nil && int64(buf.Len()) != *out.ContentLength {
		return nil, chunkstore.Transient(fmt.Errorf("%s: get %s: %d of %d bytes", s.loc, name, buf.Len(), *out.ContentLength))
	}
	return buf.Bytes(), nil
}

// Stat returns an object's size.
func (s *Store) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	if err := chunkstore.ValidName(name); err != nil {
		return chunkstore.Info{}, err
	}
	out, err := s.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.o.Bucket), Key: aws.String(s.key(name))})
	if err != nil {
		return chunkstore.Info{}, s.wrap("stat "+name, err)
	}
	return chunkstore.Info{Name: name, Size: aws.ToInt64(out.ContentLength)}, nil
}

// List pages through the objects under prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	base := ""
	if s.o.Prefix != "" {
		base = s.o.Prefix + "/"
	}
	p := s3.NewListObjectsV2Paginator(s.c, &s3.ListObjectsV2Input{Bucket: aws.String(s.o.Bucket), Prefix: aws.String(base + prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.wrap("list "+prefix, err)
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), base)
			if chunkstore.ValidName(name) != nil {
				continue
			}
			if err := fn(chunkstore.Info{Name: name, Size: aws.ToInt64(o.Size)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes an object; S3 does not say whether it existed, so a HEAD
// asks first.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.Stat(ctx, name); err != nil {
		return err
	}
	_, err := s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.o.Bucket), Key: aws.String(s.key(name))})
	return s.wrap("delete "+name, err)
}

// Sync has nothing to do: a PUT is durable when it is acknowledged.
func (s *Store) Sync(ctx context.Context) error { return ctx.Err() }

// Close releases idle connections.
func (s *Store) Close() error {
	if c, ok := s.o.HTTPClient.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	return nil
}
