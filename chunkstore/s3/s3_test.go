package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/volback/volback/chunkstore"
	s3store "github.com/volback/volback/chunkstore/s3"
	"github.com/volback/volback/chunkstore/storetest"
)

func open(t testing.TB, srv *storetest.S3Server, bucket, prefix string, mod ...func(*s3store.Options)) *s3store.Store {
	t.Helper()
	return openAt(t, srv.Endpoint, srv.AccessKey, srv.SecretKey, bucket, prefix, mod...)
}

// openAt opens a store on the gateway at endpoint.
func openAt(t testing.TB, endpoint, access, secret, bucket, prefix string, mod ...func(*s3store.Options)) *s3store.Store {
	t.Helper()
	o := s3store.Options{Bucket: bucket, Prefix: prefix, Endpoint: endpoint, PathStyle: true, Region: "us-east-1",
		AccessKeyID: access, SecretAccessKey: secret}
	for _, m := range mod {
		m(&o)
	}
	s, err := s3store.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "conformance")
	var n atomic.Int32
	storetest.Run(t, func(t *testing.T) (chunkstore.Store, func() chunkstore.Store) {
		prefix := fmt.Sprintf("run%d/repo", n.Add(1))
		s := open(t, srv, "conformance", prefix)
		return s, func() chunkstore.Store { return open(t, srv, "conformance", prefix) }
	})
}

// TestRepositoryInitRace: writers starting at once on an empty bucket
// agree on one config (conditional create).
func TestRepositoryInitRace(t *testing.T) {
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "race")
	var wg sync.WaitGroup
	seeds := make([]string, 8)
	for i := range seeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := open(t, srv, "race", "shared")
			r, err := chunkstore.OpenOrInit(context.Background(), s, chunkstore.InitOptions{}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			seeds[i] = r.Key([]byte("probe")).String()
		}()
	}
	wg.Wait()
	for _, k := range seeds[1:] {
		if k != seeds[0] {
			t.Fatalf("writers disagree on the repository's seeds: %v", seeds)
		}
	}
	if err := open(t, srv, "race", "x").PutIfAbsent(context.Background(), "config", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := open(t, srv, "race", "x").PutIfAbsent(context.Background(), "config", []byte("b")); !errors.Is(err, chunkstore.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
}

// countingClient counts the HTTP requests the SDK sends.
type countingClient struct {
	n atomic.Int32
	c *http.Client
}

func (c *countingClient) Do(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.c.Do(r)
}

func TestErrorsAndRetries(t *testing.T) {
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "errs")
	ctx := context.Background()

	// A missing bucket is a clear, permanent error naming it.
	_, err := s3store.Open(ctx, s3store.Options{Bucket: "nosuchbucket", Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	if err == nil || !strings.Contains(err.Error(), "s3://nosuchbucket") || chunkstore.IsTransient(err) {
		t.Fatalf("missing bucket: %v", err)
	}

	// Wrong credentials: a 403, sent once, never retried.
	cc := &countingClient{c: &http.Client{}}
	_, err = s3store.Open(ctx, s3store.Options{Bucket: "errs", Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: "wrong", HTTPClient: cc})
	if err == nil || chunkstore.IsTransient(err) || cc.n.Load() != 1 {
		t.Fatalf("bad credentials: %v after %d requests, want a permanent error after 1", err, cc.n.Load())
	}

	// A server that answers 503 SlowDown twice, then lets requests
	// through to the gateway: the put succeeds on the third attempt.
	target, _ := url.Parse(srv.Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var failures atomic.Int32
	failures.Store(2)
	var seen atomic.Int32
	flaky := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			seen.Add(1)
			if failures.Add(-1) >= 0 {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	})}
	port := storetest.FreePort(t)
	ln, err := listen(port)
	if err != nil {
		t.Fatal(err)
	}
	go flaky.Serve(ln)
	defer flaky.Close()
	s := open(t, srv, "errs", "p", func(o *s3store.Options) { o.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", port); o.MaxBackoff = 1 })
	if err := s.Put(ctx, "chunks/aa/x", []byte("data")); err != nil {
		t.Fatalf("put through a throttling server: %v", err)
	}
	if seen.Load() != 3 {
		t.Fatalf("%d PUT attempts, want 3 (two throttled)", seen.Load())
	}
	got, err := s.Get(ctx, "chunks/aa/x")
	if err != nil || !bytes.Equal(got, []byte("data")) {
		t.Fatalf("get: %q %v", got, err)
	}
	// Throttled beyond the attempts: a transient error naming the target.
	failures.Store(100)
	err = s.Put(ctx, "chunks/aa/y", []byte("data"))
	if err == nil || !chunkstore.IsTransient(err) || !strings.Contains(err.Error(), "s3://errs/p") {
		t.Fatalf("put through a server that keeps throttling: %v", err)
	}

	// A gateway that goes away: transient errors, then it comes back.
	srv.Stop()
	s2 := open2(t, srv)
	if s2 == nil {
		return
	}
}

func open2(t *testing.T, srv *storetest.S3Server) *s3store.Store {
	t.Helper()
	ctx := context.Background()
	_, err := s3store.Open(ctx, s3store.Options{Bucket: "errs", Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, MaxAttempts: 2, MaxBackoff: 1})
	if err == nil || !chunkstore.IsTransient(err) || !strings.Contains(err.Error(), srv.Endpoint) {
		t.Fatalf("open with the server down: %v, want a transient error naming %s", err, srv.Endpoint)
	}
	srv.Start(t)
	return open(t, srv, "errs", "p")
}

// TestProfileAndStorageClass: credentials from a named profile of a
// shared credentials file (the standard chain, no keys in the options),
// and objects written with the storage class asked for.
func TestProfileAndStorageClass(t *testing.T) {
	srv := storetest.StartS3(t)
	srv.NewBucket(t, "prof")
	creds := t.TempDir() + "/credentials"
	content := "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n[backup]\naws_access_key_id = " + srv.AccessKey + "\naws_secret_access_key = " + srv.SecretKey + "\n"
	if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	ctx := context.Background()
	o := s3store.Options{Bucket: "prof", Endpoint: srv.Endpoint, PathStyle: true, Region: "us-east-1", MaxAttempts: 1}
	if _, err := s3store.Open(ctx, o); err == nil {
		t.Fatal("the default profile's wrong keys were accepted")
	}
	o.Profile = "backup"
	o.StorageClass = "STANDARD_IA"
	hc := &headerClient{c: &http.Client{}}
	o.HTTPClient = hc
	s, err := s3store.Open(ctx, o)
	if err != nil {
		t.Fatalf("profile backup: %v", err)
	}
	if err := s.Put(ctx, "chunks/aa/k", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String("prof"), Key: aws.String("chunks/aa/k")}); err != nil {
		t.Fatal(err)
	}
	// The gateway keeps no storage classes; the request must carry it.
	if hc.storageClass.Load() != "STANDARD_IA" {
		t.Fatalf("PutObject sent storage class %q", hc.storageClass.Load())
	}
}

type headerClient struct {
	c            *http.Client
	storageClass atomic.Value
}

func (h *headerClient) Do(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut {
		h.storageClass.Store(r.Header.Get("X-Amz-Storage-Class"))
	}
	return h.c.Do(r)
}

func BenchmarkStore(b *testing.B) {
	srv := storetest.StartS3(b)
	srv.NewBucket(b, "bench")
	s := open(b, srv, "bench", "repo")
	defer s.Close()
	storetest.Bench(b, s)
}
