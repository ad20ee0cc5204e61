package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/storetest"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
)

// BenchmarkTargets measures full backups of one image into each target —
// the local ImageStore, NFS-Ganesha and versitygw on loopback — with
// parallelismDegree 1, 2, 4 and 8, side by side in one run, and reports
// each target's throughput relative to the local ImageStore's at the same
// parallelism. Run it with scripts/bench targets (VOLBACK_BENCH_SIZE sets
// the image size, default 512MiB of incompressible data).
func BenchmarkTargets(b *testing.B) {
	size := int64(512 << 20)
	if s := os.Getenv("VOLBACK_BENCH_SIZE"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("VOLBACK_BENCH_SIZE=%s: want bytes", s)
		}
		size = n
	}
	ctx := context.Background()
	dir := b.TempDir()
	img := filepath.Join(dir, "image.raw")
	if err := GenerateImage(ctx, img, ImageSpec{Size: size, Pattern: "r"}); err != nil {
		b.Fatal(err)
	}
	g := storetest.StartGanesha(b)
	srv := storetest.StartS3(b)
	srv.NewBucket(b, "bench")
	env := target.Env{S3AccessKeyID: srv.AccessKey, S3SecretAccessKey: srv.SecretKey}

	kinds := []struct {
		name string
		spec func(run string) target.Spec
	}{
		{"local", func(run string) target.Spec {
			return target.Spec{Kind: target.Local, URL: filepath.Join(dir, "local", run)}
		}},
		{"nfs", func(run string) target.Spec {
			return target.Spec{Kind: target.NFS, URL: g.URL(run), Options: g.Options()}
		}},
		{"s3", func(run string) target.Spec {
			return target.Spec{Kind: target.S3, URL: srv.Endpoint + "/bench/" + run}
		}},
	}
	localRate := map[int]float64{}
	for _, p := range []int{1, 2, 4, 8} {
		for _, k := range kinds {
			b.Run(fmt.Sprintf("%s/p%d", k.name, p), func(b *testing.B) {
				var total time.Duration
				for i := 0; i < b.N; i++ {
					run := fmt.Sprintf("p%d-%d-%d", p, i, time.Now().UnixNano())
					spec := k.spec(run)
					if spec.Kind == target.Local {
						if err := os.MkdirAll(spec.URL, 0o755); err != nil {
							b.Fatal(err)
						}
					}
					st, err := target.Open(ctx, spec, env)
					if err != nil {
						b.Fatal(err)
					}
					repo, err := chunkstore.OpenOrInit(ctx, st, chunkstore.InitOptions{}, nil)
					if err != nil {
						b.Fatal(err)
					}
					f, err := os.Open(img)
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					if _, err := dataplane.Backup(ctx, repo, f, size, dataplane.BackupOptions{VolumeID: "bench", Parallelism: p}); err != nil {
						b.Fatal(err)
					}
					total += time.Since(start)
					f.Close()
					repo.Close()
					// Free the space before the next run.
					switch spec.Kind {
					case target.Local:
						os.RemoveAll(spec.URL)
					case target.NFS:
						os.RemoveAll(filepath.Join(g.Export, run))
					case target.S3:
						os.RemoveAll(filepath.Join(srv.Dir, "bench", run))
					}
				}
				rate := float64(size) * float64(b.N) / total.Seconds() / 1e6
				b.ReportMetric(rate, "MB/s")
				b.ReportMetric(0, "ns/op")
				if k.name == "local" {
					localRate[p] = rate
				} else if lr := localRate[p]; lr > 0 {
					b.ReportMetric(rate/lr, "x-local")
				}
			})
		}
	}
}
