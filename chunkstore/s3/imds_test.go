package s3_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	s3store "github.com/volback/volback/chunkstore/s3"
)

// TestInstanceMetadataOnlyWhenAsked: with no credentials configured, the
// driver does not ask the instance-metadata service for them unless the
// target says instance-metadata. The service is a loopback stand-in
// (AWS_EC2_METADATA_SERVICE_ENDPOINT), and the metadata switch the tests
// set elsewhere is turned off, so only the driver's choice decides.
func TestInstanceMetadataOnlyWhenAsked(t *testing.T) {
	var hits atomic.Int64
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no role here", http.StatusNotFound)
	}))
	defer imds.Close()
	dir := t.TempDir()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	// An endpoint that refuses connections: the request fails either way.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	endpoint := "http://" + l.Addr().String()
	l.Close()

	for _, ask := range []bool{false, true} {
		hits.Store(0)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := s3store.Open(ctx, s3store.Options{Bucket: "b", Endpoint: endpoint, PathStyle: true, Region: "us-east-1", MaxAttempts: 1, InstanceMetadata: ask})
		cancel()
		if err == nil {
			t.Fatal("opened a bucket with no credentials and no server")
		}
		switch {
		case !ask && hits.Load() != 0:
			t.Errorf("the instance-metadata service was asked %d times though the target did not ask for it", hits.Load())
		case ask && hits.Load() == 0:
			t.Errorf("instance-metadata was asked for, and the service never heard of it (%v)", err)
		}
	}
}
