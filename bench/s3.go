package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/volback/volback/bench/peer"
	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	s3store "github.com/volback/volback/chunkstore/s3"
	"github.com/volback/volback/dataplane"
)

// S3CompareConfig configures CompareS3.
type S3CompareConfig struct {
	Dir         string // working directory: image, servers' data, restores
	Size        int64  // size of the generated image
	Rounds      int    // rounds; the targets take turns in each
	Parallelism int    // workers (0 = one per CPU)
}

// S3Run is one target's backups and restores.
type S3Run struct {
	Target         string    `json:"target"`
	BackupSeconds  []float64 `json:"backupSeconds"`
	RestoreSeconds []float64 `json:"restoreSeconds"`
	BackupMiBps    float64   `json:"backupMibPerSecond"`  // median round
	RestoreMiBps   float64   `json:"restoreMibPerSecond"` // median round
	Objects        int       `json:"objects"`             // chunk objects of one backup
}

// S3CompareResult is CompareS3's report.
type S3CompareResult struct {
	When   time.Time `json:"when"`
	CPUs   int       `json:"cpus"`
	Size   int64     `json:"size"`
	Rounds int       `json:"rounds"`
	Runs   []S3Run   `json:"runs"`
	// BackupRatio and RestoreRatio are the SeaweedFS cluster's speed over
	// versitygw's: medians of the rounds' paired ratios.
	BackupRatio  float64 `json:"backupRatio"`
	RestoreRatio float64 `json:"restoreRatio"`
}

// Targets CompareS3 measures.
const (
	TargetLocal     = "local disk (ImageStore)"
	TargetVersity   = "versitygw (one process)"
	TargetSeaweedFS = "SeaweedFS (3 volume servers, 2 copies)"
)

// CompareS3 backs one generated image up in full into a fresh repository
// on each target, then restores it, side by side in each round: the local
// disk (the machine's own limit), a versitygw and a SeaweedFS cluster
// (master, three volume servers keeping two copies of each volume, filer,
// S3 gateway), all on this machine's loopback.
func CompareS3(ctx context.Context, cfg S3CompareConfig, log io.Writer) (*S3CompareResult, error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	img := filepath.Join(cfg.Dir, "s3-image.raw")
	fmt.Fprintf(log, "generating %s image %s\n", humanize.IBytes(uint64(cfg.Size)), img)
	if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size, Seed: 11}); err != nil {
		return nil, err
	}
	defer os.Remove(img)
	data := filepath.Join(cfg.Dir, "s3-servers")
	if err := os.RemoveAll(data); err != nil {
		return nil, err
	}
	defer os.RemoveAll(data)
	for _, d := range []string{"versity", "seaweedfs"} {
		if err := os.MkdirAll(filepath.Join(data, d), 0o700); err != nil {
			return nil, err
		}
	}
	fmt.Fprintln(log, "starting versitygw and a SeaweedFS cluster")
	vg, err := peer.StartVersity(ctx, filepath.Join(data, "versity"), data)
	if err != nil {
		return nil, err
	}
	defer vg.Stop()
	sw, err := peer.StartSeaweedFS(ctx, peer.SeaweedFSOptions{Dir: filepath.Join(data, "seaweedfs")})
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	for _, mk := range []func(context.Context, string) error{vg.NewBucket, sw.NewBucket} {
		if err := mk(ctx, "bench"); err != nil {
			return nil, err
		}
	}
	open := map[string]func(prefix string) (chunkstore.Store, error){
		TargetLocal: func(prefix string) (chunkstore.Store, error) {
			return local.Open(filepath.Join(cfg.Dir, "s3-local", prefix))
		},
		TargetVersity: func(prefix string) (chunkstore.Store, error) {
			return s3store.Open(ctx, s3store.Options{Bucket: "bench", Prefix: prefix, Endpoint: vg.Endpoint, PathStyle: true,
				Region: "us-east-1", AccessKeyID: vg.AccessKey, SecretAccessKey: vg.SecretKey})
		},
		TargetSeaweedFS: func(prefix string) (chunkstore.Store, error) {
			return s3store.Open(ctx, s3store.Options{Bucket: "bench", Prefix: prefix, Endpoint: sw.Endpoint, PathStyle: true,
				Region: "us-east-1", AccessKeyID: sw.AccessKey, SecretAccessKey: sw.SecretKey})
		},
	}
	defer os.RemoveAll(filepath.Join(cfg.Dir, "s3-local"))
	res := &S3CompareResult{When: time.Now().UTC(), CPUs: runtime.NumCPU(), Size: cfg.Size, Rounds: cfg.Rounds}
	runs := []S3Run{{Target: TargetLocal}, {Target: TargetVersity}, {Target: TargetSeaweedFS}}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, i := range turns(len(runs), round) {
			st, err := open[runs[i].Target](fmt.Sprintf("round%d", round))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", runs[i].Target, err)
			}
			b, r, objects, err := s3Round(ctx, cfg, st, img)
			st.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", runs[i].Target, err)
			}
			runs[i].BackupSeconds = append(runs[i].BackupSeconds, b)
			runs[i].RestoreSeconds = append(runs[i].RestoreSeconds, r)
			runs[i].Objects = objects
			fmt.Fprintf(log, "round %d %s: backup %.2f s (%.0f MiB/s), restore %.2f s (%.0f MiB/s)\n", round, runs[i].Target,
				b, float64(cfg.Size)/b/(1<<20), r, float64(cfg.Size)/r/(1<<20))
		}
	}
	var br, rr []float64
	for k := range cfg.Rounds {
		br = append(br, runs[1].BackupSeconds[k]/runs[2].BackupSeconds[k])
		rr = append(rr, runs[1].RestoreSeconds[k]/runs[2].RestoreSeconds[k])
	}
	for i := range runs {
		runs[i].BackupMiBps = float64(cfg.Size) / median(runs[i].BackupSeconds) / (1 << 20)
		runs[i].RestoreMiBps = float64(cfg.Size) / median(runs[i].RestoreSeconds) / (1 << 20)
	}
	res.Runs, res.BackupRatio, res.RestoreRatio = runs, median(br), median(rr)
	return res, nil
}

// s3Round backs img up into a new repository on st and restores it,
// timing both; it also counts the chunk objects stored.
func s3Round(ctx context.Context, cfg S3CompareConfig, st chunkstore.Store, img string) (backup, restore float64, objects int, err error) {
	repo, err := chunkstore.Init(ctx, st, chunkstore.InitOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	defer repo.Close()
	f, err := os.Open(img)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	start := time.Now()
	m, err := dataplane.Backup(ctx, repo, f, cfg.Size, dataplane.BackupOptions{VolumeID: "bench", Parallelism: cfg.Parallelism})
	if err != nil {
		return 0, 0, 0, err
	}
	backup = time.Since(start).Seconds()
	out := filepath.Join(cfg.Dir, "s3-restored.raw")
	os.Remove(out)
	defer os.Remove(out)
	start = time.Now()
	if _, err := dataplane.Restore(ctx, repo, m, out, dataplane.RestoreOptions{Parallelism: cfg.Parallelism, SkipVerify: true}); err != nil {
		return 0, 0, 0, err
	}
	restore = time.Since(start).Seconds()
	return backup, restore, m.Stats.ChunksNew, nil
}

// WriteTable prints the comparison.
func (r *S3CompareResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "full backup and restore of a %s image, %d CPUs, median of %d rounds, every server on this machine\n", humanize.IBytes(uint64(r.Size)), r.CPUs, r.Rounds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tBACKUP MiB/s\tRESTORE MiB/s\tCHUNKS\tBACKUP ROUNDS (s)\tRESTORE ROUNDS (s)")
	for _, run := range r.Runs {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%d\t%v\t%v\n", run.Target, run.BackupMiBps, run.RestoreMiBps, run.Objects,
			roundsOf(run.BackupSeconds), roundsOf(run.RestoreSeconds))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "SeaweedFS cluster at %.2fx versitygw's backup speed and %.2fx its restore speed (median of paired rounds)\n", r.BackupRatio, r.RestoreRatio)
	return err
}

func roundsOf(xs []float64) []string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return s
}
