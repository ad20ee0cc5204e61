package peer_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/volback/volback/chunkstore/storetest"
)

// TestSeaweedFSSurvivesOneVolumeServer: what the multi-node tests rely
// on. Objects written before a volume server dies are read through their
// other copy, and new ones are written while it is down.
func TestSeaweedFSSurvivesOneVolumeServer(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c := storetest.StartSeaweedFS(t)
	ctx := context.Background()
	if err := c.NewBucket(ctx, "peer-test"); err != nil {
		t.Fatal(err)
	}
	cl := c.Client()
	put := func(name string, data []byte) error {
		_, err := cl.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("peer-test"), Key: aws.String(name), Body: bytes.NewReader(data)})
		return err
	}
	get := func(name string) ([]byte, error) {
		out, err := cl.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("peer-test"), Key: aws.String(name)})
		if err != nil {
			return nil, err
		}
		defer out.Body.Close()
		return io.ReadAll(out.Body)
	}
	obj := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1<<20+i) }
	for i := range 30 {
		if err := put(fmt.Sprint("before/", i), obj(i)); err != nil {
			t.Fatal(err)
		}
	}
	c.KillVolumeServer(0)
	for i := range 30 {
		b, err := get(fmt.Sprint("before/", i))
		if err != nil || !bytes.Equal(b, obj(i)) {
			t.Fatalf("object %d with a volume server down: %v", i, err)
		}
	}
	// Writes may fail while the master still counts the dead server;
	// they must succeed once it has noticed.
	failed := 0
	deadline := time.Now().Add(time.Minute)
	for i := 0; i < 30; {
		if err := put(fmt.Sprint("during/", i), obj(i)); err != nil {
			failed++
			if time.Now().After(deadline) {
				t.Fatalf("writes still fail a minute after a volume server died: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		i++
	}
	t.Logf("%d writes failed while the master noticed the dead server", failed)
	if err := c.StartVolumeServer(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		b, err := get(fmt.Sprint("during/", i))
		if err != nil || !bytes.Equal(b, obj(i)) {
			t.Fatalf("object %d after the server returned: %v", i, err)
		}
	}
}
