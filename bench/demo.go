package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
)

// DemoConfig configures RunDemo.
type DemoConfig struct {
	Dir  string // working directory; created if missing
	Size int64  // image size
}

// RunDemo generates an image, backs it up twice into a fresh repository
// (the second time everything deduplicates), restores it, compares it with
// the original and verifies the repository, reporting each step to w.
func RunDemo(ctx context.Context, cfg DemoConfig, w io.Writer) error {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return err
	}
	img := filepath.Join(cfg.Dir, "volume.raw")
	repoDir := filepath.Join(cfg.Dir, "repo")
	out := filepath.Join(cfg.Dir, "restored.raw")
	for _, p := range []string{repoDir, out} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	step := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }

	t := time.Now()
	if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size, Seed: uint64(time.Now().UnixNano())}); err != nil {
		return err
	}
	step("generated %s: %s, half random, a quarter text, a quarter zeros (%s)", img, humanize.IBytes(uint64(cfg.Size)), time.Since(t).Round(time.Millisecond))

	repoSpec, err := target.ParseURL(repoDir)
	if err != nil {
		return err
	}
	repo, err := target.OpenRepository(ctx, repoSpec, target.Env{}, target.RepoOptions{Create: target.CreateNew})
	if err != nil {
		return err
	}
	defer repo.Close()
	step("created repository %s", repoDir)

	f, size, err := dataplane.OpenVolume(img)
	if err != nil {
		return err
	}
	defer f.Close()
	var m *chunkstore.Manifest
	for i, what := range []string{"full backup", "same data again"} {
		t = time.Now()
		m, err = dataplane.Backup(ctx, repo, f, size, dataplane.BackupOptions{VolumeID: "demo", Meta: map[string]string{"name": fmt.Sprintf("demo-%d", i+1)}})
		if err != nil {
			return err
		}
		d := time.Since(t)
		step("%-16s %s in %s (%s): %d chunks, %d new, %s stored, %d deduplicated, %d zero",
			what+":", m.ID, d.Round(time.Millisecond), rateOf(size, d), m.Stats.ChunksTotal, m.Stats.ChunksNew,
			humanize.IBytes(uint64(m.Stats.BytesStored)), m.Stats.ChunksDedup, m.Stats.ChunksZero)
	}

	t = time.Now()
	if _, err := dataplane.Restore(ctx, repo, m, out, dataplane.RestoreOptions{}); err != nil {
		return err
	}
	d := time.Since(t)
	step("%-16s %s in %s (%s), verified", "restore:", out, d.Round(time.Millisecond), rateOf(size, d))

	same, err := sameContent(img, out)
	if err != nil {
		return err
	}
	if !same {
		return fmt.Errorf("demo: %s differs from %s", out, img)
	}
	step("%-16s restored image is bit-identical to the original", "compare:")

	rep, err := repo.Verify(ctx, nil, chunkstore.VerifyOptions{})
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("demo: verify found %d bad chunks", len(rep.Bad))
	}
	step("%-16s %d chunks of %d backups are intact", "verify:", rep.Chunks, rep.Backups)
	return nil
}

func rateOf(n int64, d time.Duration) string {
	return fmt.Sprintf("%.0f MiB/s", float64(n)/d.Seconds()/(1<<20))
}

// sameContent compares two files in 4 MiB blocks.
func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == ea, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}
