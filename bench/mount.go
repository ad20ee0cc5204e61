package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
)

// MountCompareConfig configures CompareMount.
type MountCompareConfig struct {
	Dir     string   // working directory
	Image   string   // image to back up; empty = generate one of Size
	Size    int64    // size of the generated image
	Tools   []string // volback and/or restic
	Volback string   // path of the volback binary
	Rounds  int      // sequential reads per tool after the first
}

// MountRun is one tool's measurement.
type MountRun struct {
	Tool    string `json:"tool"`
	Version string `json:"version"`
	// MountSeconds is from starting the mount command to the image
	// being listed; FirstByteSeconds from the start to its first byte.
	MountSeconds     float64 `json:"mountSeconds"`
	FirstByteSeconds float64 `json:"firstByteSeconds"`
	// ColdMBps is the first sequential read of the whole image after the
	// page cache was dropped (repository read from disk); WarmMBps a read
	// through a fresh mount with the repository in the page cache (chunks
	// fetched, checked and decoded again); CachedMBps the best re-read
	// through the same mount.
	ColdMBps   float64 `json:"coldMBps"`
	WarmMBps   float64 `json:"warmMBps"`
	CachedMBps float64 `json:"cachedMBps"`
	// ColdVsRestic and WarmVsRestic compare with restic's rates.
	ColdVsRestic float64 `json:"coldVsRestic,omitempty"`
	WarmVsRestic float64 `json:"warmVsRestic,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// MountCompareResult is CompareMount's report.
type MountCompareResult struct {
	When  time.Time  `json:"when"`
	Image string     `json:"image"`
	Size  int64      `json:"size"`
	Runs  []MountRun `json:"runs"`
}

// CompareMount backs one image up with each tool, mounts the backup with
// the tool's own FUSE mount (`volback mount`, `restic mount`), and reads
// the image back sequentially through it: first byte, a fresh read, and
// cached reads. MB/s = 10^6 bytes per second.
func CompareMount(ctx context.Context, cfg MountCompareConfig, log io.Writer) (*MountCompareResult, error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 2
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	img := cfg.Image
	if img == "" {
		img = filepath.Join(cfg.Dir, "image.raw")
		fmt.Fprintf(log, "generating %s image %s\n", humanize.IBytes(uint64(cfg.Size)), img)
		if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size}); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	res := &MountCompareResult{When: time.Now().UTC(), Image: img, Size: st.Size()}
	for _, tool := range cfg.Tools {
		run, err := measureMount(ctx, cfg, tool, img, st.Size(), log)
		if err != nil {
			run.Error = err.Error()
			fmt.Fprintf(log, "%s: %v\n", tool, err)
		}
		res.Runs = append(res.Runs, run)
	}
	var restic *MountRun
	for i, r := range res.Runs {
		if r.Tool == ToolRestic && r.Error == "" {
			restic = &res.Runs[i]
		}
	}
	for i := range res.Runs {
		if restic != nil && res.Runs[i].Error == "" && restic.ColdMBps > 0 && restic.WarmMBps > 0 {
			res.Runs[i].ColdVsRestic = res.Runs[i].ColdMBps / restic.ColdMBps
			res.Runs[i].WarmVsRestic = res.Runs[i].WarmMBps / restic.WarmMBps
		}
	}
	return res, nil
}

func measureMount(ctx context.Context, cfg MountCompareConfig, tool, img string, size int64, log io.Writer) (MountRun, error) {
	run := MountRun{Tool: tool}
	repo := filepath.Join(cfg.Dir, "mount-repo-"+tool)
	mnt := filepath.Join(cfg.Dir, "mnt-"+tool)
	_ = exec.Command("fusermount3", "-u", "-z", mnt).Run()
	if err := os.RemoveAll(repo); err != nil {
		return run, err
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return run, err
	}
	env := os.Environ()
	var mountArgs []string
	var path func() (string, error)
	switch tool {
	case ToolVolback:
		run.Version = "this build"
		if _, err := runTimed(ctx, env, []string{cfg.Volback, "--quiet", "repo", "init", "--repo", repo}); err != nil {
			return run, err
		}
		fmt.Fprintf(log, "volback: backing up %s\n", img)
		if _, err := runTimed(ctx, env, []string{cfg.Volback, "--quiet", "backup", "--repo", repo, img}); err != nil {
			return run, err
		}
		mountArgs = []string{cfg.Volback, "mount", "--repo", repo, mnt}
		path = func() (string, error) {
			m, _ := filepath.Glob(filepath.Join(mnt, "*", "*.raw"))
			if len(m) != 1 {
				return "", errors.New("not yet")
			}
			return m[0], nil
		}
	case ToolRestic:
		env = baselineEnv(cfg.Dir, ToolRestic)
		run.Version = toolVersion(ctx, "restic", "version")
		if _, err := runTimed(ctx, env, []string{"restic", "init", "--repo", repo}); err != nil {
			return run, err
		}
		fmt.Fprintf(log, "restic: backing up %s\n", img)
		if _, err := runTimed(ctx, env, []string{"restic", "backup", "--quiet", "--repo", repo, img}); err != nil {
			return run, err
		}
		mountArgs = []string{"restic", "mount", "--repo", repo, mnt}
		path = func() (string, error) {
			p := filepath.Join(mnt, "snapshots", "latest", img)
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
	default:
		return run, fmt.Errorf("unknown tool %q (want volback or restic)", tool)
	}
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
	fmt.Fprintf(log, "%s: reading %s through %s mount\n", tool, humanize.IBytes(uint64(size)), mountArgs[0])
	// Cold: caches dropped; first byte and a whole read.
	err := withMount(ctx, env, mountArgs, mnt, path, func(file string, start time.Time, f *os.File) error {
		run.MountSeconds = time.Since(start).Seconds()
		if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
			return err
		}
		run.FirstByteSeconds = time.Since(start).Seconds()
		var err error
		run.ColdMBps, err = readAll(f, size)
		return err
	})
	if err != nil {
		return run, err
	}
	// Warm: a new mount (nothing of the image in its page cache) over a
	// repository the first read left in the page cache; then re-reads.
	err = withMount(ctx, env, mountArgs, mnt, path, func(file string, start time.Time, f *os.File) error {
		var err error
		if run.WarmMBps, err = readAll(f, size); err != nil {
			return err
		}
		for range cfg.Rounds {
			r, err := readAll(f, size)
			if err != nil {
				return err
			}
			run.CachedMBps = max(run.CachedMBps, r)
		}
		return nil
	})
	return run, err
}

// withMount starts a mount command, waits for the image to show, runs fn
// with it open, and unmounts.
func withMount(ctx context.Context, env, mountArgs []string, mnt string, path func() (string, error), fn func(string, time.Time, *os.File) error) error {
	start := time.Now()
	cmd := exec.CommandContext(ctx, mountArgs[0], mountArgs[1:]...)
	cmd.Env = env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			_ = exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	}()
	var file string
	for {
		p, err := path()
		if err == nil {
			file = p
			break
		}
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("%s never showed the image: %s", strings.Join(mountArgs, " "), out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(file, start, f)
}

// readAll reads f front to back in 1 MiB reads and returns MB/s.
func readAll(f *os.File, size int64) (float64, error) {
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	var n int64
	for off := int64(0); off < size; {
		k, err := f.ReadAt(buf, off)
		off += int64(k)
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if n != size {
		return 0, fmt.Errorf("read %d of %d bytes", n, size)
	}
	return float64(size) / time.Since(t0).Seconds() / 1e6, nil
}

// WriteTable prints the result.
func (r *MountCompareResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "sequential read of a %s image through each tool's FUSE mount of its backup\n", humanize.IBytes(uint64(r.Size)))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "tool\tversion\tmount s\tfirst byte s\tcold MB/s\twarm MB/s\tcached MB/s\tcold vs restic\twarm vs restic")
	for _, x := range r.Runs {
		if x.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\terror: %s\n", x.Tool, x.Version, x.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.0f\t%.0f\t%.0f\t%.2fx\t%.2fx\n", x.Tool, x.Version, x.MountSeconds, x.FirstByteSeconds,
			x.ColdMBps, x.WarmMBps, x.CachedMBps, x.ColdVsRestic, x.WarmVsRestic)
	}
	return tw.Flush()
}
