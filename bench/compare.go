package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/dataplane"
)

// Tools that CompareBackup knows how to run.
const (
	ToolVolback = "volback"
	// ToolVolbackEncrypted is volback into an encrypted repository: its
	// cost is the ratio to ToolVolback.
	ToolVolbackEncrypted = "volback-encrypted"
	// ToolVolbackLZ4, ToolVolbackS2 and ToolVolbackZstd are volback into
	// a repository compressed with one codec alone (ToolVolback: the
	// default, auto); ToolVolbackNone into one that does not compress,
	// which shows what compressing costs and saves.
	ToolVolbackLZ4  = "volback-lz4"
	ToolVolbackS2   = "volback-s2"
	ToolVolbackZstd = "volback-zstd"
	ToolVolbackNone = "volback-none"
	ToolRestic      = "restic"
	ToolBorg        = "borg"
	// ToolQemuImg is `qemu-img convert` of the image to a qcow2 file: a
	// copy that skips zeros, with no dedup or compression, flushed.
	ToolQemuImg = "qemu-img"
)

// BackupCompareConfig configures CompareBackup.
type BackupCompareConfig struct {
	Dir         string   // working directory for the image and repositories
	Image       string   // an existing image to back up; empty = generate one
	Size        int64    // size of the generated image
	ChunkSize   int      // volback chunk size (0 = repository default)
	Parallelism int      // volback workers (0 = dataplane.BackupWorkers)
	Tools       []string // tools to run, in order
	Volback     string   // path of the volback binary
	DropCaches  bool     // drop the page cache before each run (root only)
	// Rounds is how many times each tool runs; tools take turns in every
	// round so that a noisy disk or CPU affects all of them alike, and
	// each tool's median round is reported.
	Rounds int
	// Floor, if set, follows each volback run with the disk floor for
	// what it stored: as many bytes written to one file in Dir with
	// O_DIRECT, then fsync, timed; each round's ratio pairs the two runs,
	// so a disk that bursts and then settles moves both alike.
	Floor bool
}

// ToolRun is one tool's measured backup.
type ToolRun struct {
	Tool     string  `json:"tool"`
	Version  string  `json:"version"`
	Settings string  `json:"settings"`
	Seconds  float64 `json:"seconds"` // median of the rounds
	// RoundSeconds holds every round's time, in order.
	RoundSeconds []float64 `json:"roundSeconds"`
	MiBps        float64   `json:"mibPerSecond"`
	MaxRSS       int64     `json:"maxRssBytes"`
	// CPUSeconds is the tool's user and system time, the median of the
	// rounds (RoundCPUSeconds in order); CPUBusy the median of the rounds'
	// CPU time over wall time times the CPUs: 1 keeps every CPU busy
	// throughout, so the run is bound by the CPUs, not by the disk.
	CPUSeconds      float64   `json:"cpuSeconds,omitempty"`
	RoundCPUSeconds []float64 `json:"roundCpuSeconds,omitempty"`
	CPUBusy         float64   `json:"cpuBusy,omitempty"`
	RepoBytes       int64     `json:"repoBytes"`
	// VolbackSpeedup is this tool's time divided by volback's: the median
	// of the rounds' ratios (each round runs the tools in turn).
	VolbackSpeedup float64 `json:"volbackSpeedup,omitempty"`
	// FloorRounds is, per round, the time to write RepoBytes with
	// O_DIRECT and fsync right after the run (BackupCompareConfig.Floor);
	// FloorRatio the median of the rounds' run over floor.
	FloorRounds []float64 `json:"floorRoundSeconds,omitempty"`
	FloorRatio  float64   `json:"floorRatio,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// BackupCompareResult is CompareBackup's report.
type BackupCompareResult struct {
	When        time.Time `json:"when"`
	CPUs        int       `json:"cpus"`
	Image       string    `json:"image"`
	Size        int64     `json:"size"`
	Parallelism int       `json:"parallelism"`
	ChunkSize   int       `json:"chunkSize"`
	Cache       string    `json:"cache"`
	Rounds      int       `json:"rounds"`
	Runs        []ToolRun `json:"runs"`
	// MemoryBudget is 64 MiB + parallelism x 2 x chunk size (each worker's
	// read buffer and encoding buffer), the bound volback's
	// peak RSS must stay under.
	MemoryBudget int64 `json:"memoryBudgetBytes"`
	// EncryptedSpeed is the encrypted backup's speed over the unencrypted
	// one: the median of the rounds' ratios, each taken within one round
	// (the two ran back to back), so drift between rounds cancels.
	EncryptedSpeed float64 `json:"encryptedSpeed,omitempty"`
}

// CompareBackup backs the same image up with each tool, one after another,
// into fresh repositories under cfg.Dir, and measures each.
func CompareBackup(ctx context.Context, cfg BackupCompareConfig, log io.Writer) (*BackupCompareResult, error) {
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = dataplane.BackupWorkers()
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = 4 << 20
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 1
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	img := cfg.Image
	if img == "" {
		img = filepath.Join(cfg.Dir, "image.raw")
		fmt.Fprintf(log, "generating %s image %s\n", humanize.IBytes(uint64(cfg.Size)), img)
		if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size, Seed: 42}); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	res := &BackupCompareResult{
		When: time.Now().UTC(), CPUs: runtime.NumCPU(), Image: img, Size: st.Size(),
		Parallelism: cfg.Parallelism, ChunkSize: cfg.ChunkSize, Cache: "warm", Rounds: cfg.Rounds,
		MemoryBudget: 64<<20 + 2*int64(cfg.Parallelism)*int64(cfg.ChunkSize),
	}
	if cfg.DropCaches {
		res.Cache = "cold (page cache dropped before each run)"
	}
	runs := make([]ToolRun, len(cfg.Tools))
	for round := 1; round <= cfg.Rounds; round++ {
		for _, i := range turns(len(cfg.Tools), round) {
			tool := cfg.Tools[i]
			if runs[i].Error != "" {
				continue
			}
			run, err := runBackupTool(ctx, cfg, tool, img, log)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				runs[i] = ToolRun{Tool: tool, Error: err.Error()}
				fmt.Fprintf(log, "%s: %v\n", tool, err)
				continue
			}
			fmt.Fprintf(log, "round %d %s: %.2f s, %.0f MiB/s, max RSS %s\n", round, tool, run.Seconds,
				float64(res.Size)/run.Seconds/(1<<20), humanize.IBytes(uint64(run.MaxRSS)))
			run.RoundSeconds = append(runs[i].RoundSeconds, run.Seconds)
			run.RoundCPUSeconds = append(runs[i].RoundCPUSeconds, run.CPUSeconds)
			run.MaxRSS = max(run.MaxRSS, runs[i].MaxRSS)
			run.FloorRounds = runs[i].FloorRounds
			if cfg.Floor && strings.HasPrefix(tool, ToolVolback) {
				fs, err := DiskFloor(ctx, filepath.Join(cfg.Dir, "floor.raw"), run.RepoBytes)
				if err != nil {
					return nil, fmt.Errorf("disk floor: %w", err)
				}
				run.FloorRounds = append(run.FloorRounds, fs)
				fmt.Fprintf(log, "round %d %s: disk floor %.2f s\n", round, tool, fs)
			}
			runs[i] = run
		}
	}
	for i := range runs {
		if r := &runs[i]; r.Error == "" {
			r.Seconds = median(r.RoundSeconds)
			r.MiBps = float64(res.Size) / r.Seconds / (1 << 20)
			r.CPUSeconds = median(r.RoundCPUSeconds)
			busy := make([]float64, len(r.RoundSeconds))
			for k := range busy {
				busy[k] = r.RoundCPUSeconds[k] / (r.RoundSeconds[k] * float64(res.CPUs))
			}
			r.CPUBusy = median(busy)
			if len(r.FloorRounds) == len(r.RoundSeconds) && len(r.FloorRounds) > 0 {
				ratios := make([]float64, len(r.FloorRounds))
				for k := range ratios {
					ratios[k] = r.RoundSeconds[k] / r.FloorRounds[k]
				}
				r.FloorRatio = median(ratios)
			}
		}
	}
	res.Runs = runs
	var vb *ToolRun
	for i := range res.Runs {
		if res.Runs[i].Tool == ToolVolback && res.Runs[i].Error == "" {
			vb = &res.Runs[i]
		}
	}
	if vb != nil {
		for i := range res.Runs {
			r := &res.Runs[i]
			if r.Error != "" {
				continue
			}
			r.VolbackSpeedup = pairedRatio(r.RoundSeconds, vb.RoundSeconds)
			if r.Tool == ToolVolbackEncrypted && len(r.RoundSeconds) == len(vb.RoundSeconds) {
				ratios := make([]float64, len(r.RoundSeconds))
				for k := range ratios {
					ratios[k] = vb.RoundSeconds[k] / r.RoundSeconds[k]
				}
				res.EncryptedSpeed = median(ratios)
			}
		}
	}
	return res, nil
}

func runBackupTool(ctx context.Context, cfg BackupCompareConfig, tool, img string, log io.Writer) (ToolRun, error) {
	run := ToolRun{Tool: tool}
	repo := filepath.Join(cfg.Dir, "repo-"+tool)
	if err := os.RemoveAll(repo); err != nil {
		return run, err
	}
	env := os.Environ()
	var setup [][]string
	var backup []string
	switch tool {
	case ToolVolback, ToolVolbackEncrypted, ToolVolbackLZ4, ToolVolbackS2, ToolVolbackZstd, ToolVolbackNone:
		bin := cfg.Volback
		if bin == "" {
			return run, errors.New("no volback binary given")
		}
		run.Version = "this build"
		comp := string(chunkstore.CompressionAutoS2)
		switch tool {
		case ToolVolbackLZ4:
			comp = "lz4"
		case ToolVolbackS2:
			comp = "s2"
		case ToolVolbackZstd:
			comp = "zstd"
		case ToolVolbackNone:
			comp = string(chunkstore.CompressionNone)
		}
		run.Settings = fmt.Sprintf("chunk %s, compression %s, %d workers", humanize.IBytes(uint64(cfg.ChunkSize)), comp, cfg.Parallelism)
		setup = [][]string{{bin, "--quiet", "repo", "init", "--repo", repo, "--chunk-size", fmt.Sprint(cfg.ChunkSize), "--compression", comp}}
		if tool == ToolVolbackEncrypted {
			env = append(env, "VOLBACK_PASSWORD=bench")
			run.Settings += ", AES-256-GCM, keyed BLAKE3 names, argon2id key (its derivation counted)"
			setup[0] = append(setup[0], "--encrypt")
		}
		backup = []string{bin, "--quiet", "backup", "--repo", repo, "--parallelism", fmt.Sprint(cfg.Parallelism), img}
	case ToolRestic:
		env = baselineEnv(cfg.Dir, ToolRestic)
		run.Version = toolVersion(ctx, "restic", "version")
		run.Settings = "defaults (content-defined chunks, SHA-256, AES, compression auto)"
		setup = [][]string{{"restic", "init", "--repo", repo}}
		backup = []string{"restic", "backup", "--quiet", "--repo", repo, img}
	case ToolBorg:
		env = baselineEnv(cfg.Dir, ToolBorg)
		run.Version = toolVersion(ctx, "borg", "--version")
		run.Settings = "--encryption none, default lz4 compression"
		setup = [][]string{{"borg", "init", "--encryption", "none", repo}}
		backup = []string{"borg", "create", repo + "::bench", img}
	case ToolQemuImg:
		run.Version = toolVersion(ctx, "qemu-img", "--version")
		run.Settings = "convert -O qcow2 (zeros skipped, flushed on close)"
		setup = [][]string{{"mkdir", "-p", repo}}
		backup = []string{"qemu-img", "convert", "-O", "qcow2", "-t", "writeback", img, filepath.Join(repo, "backup.qcow2")}
	default:
		return run, fmt.Errorf("unknown tool %q (want volback, volback-encrypted, volback-zstd, volback-s2, volback-lz4, volback-none, restic, borg or qemu-img)", tool)
	}
	for _, args := range setup {
		if _, err := runTimed(ctx, env, args); err != nil {
			return run, err
		}
	}
	if err := prepareCache(img, cfg.DropCaches); err != nil {
		return run, err
	}
	fmt.Fprintf(log, "running %s\n", strings.Join(backup, " "))
	tm, err := runTimed(ctx, env, backup)
	if err != nil {
		return run, err
	}
	run.Seconds = tm.wall.Seconds()
	run.CPUSeconds = tm.cpu.Seconds()
	run.MaxRSS = tm.rss
	run.RepoBytes = diskUsage(repo)
	return run, nil
}

// baselineEnv is the environment restic or borg runs with here: the
// benchmark's password, caches under dir.
func baselineEnv(dir, tool string) []string {
	env := os.Environ()
	switch tool {
	case ToolRestic:
		return append(env, "RESTIC_PASSWORD=bench", "RESTIC_CACHE_DIR="+filepath.Join(dir, "restic-cache"))
	case ToolBorg:
		return append(env, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes", "BORG_BASE_DIR="+filepath.Join(dir, "borg-base"))
	}
	return env
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// timing is what runTimed measured of one command.
type timing struct {
	wall time.Duration
	rss  int64         // peak resident set
	cpu  time.Duration // user and system time, with its children's
}

// runTimed runs a command and returns its wall time, peak RSS and CPU time.
func runTimed(ctx context.Context, env []string, args []string) (timing, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	start := time.Now()
	err := cmd.Run()
	t := timing{wall: time.Since(start)}
	if err != nil {
		return t, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	t.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		t.rss = ru.Maxrss * 1024 // kilobytes on Linux
	}
	return t, nil
}

func toolVersion(ctx context.Context, name string, arg string) string {
	out, err := exec.CommandContext(ctx, name, arg).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// prepareCache flushes dirty pages, so no tool pays for another's
// writeback, then either drops the page cache or warms it with the image.
func prepareCache(img string, drop bool) error {
	syscall.Sync()
	if drop {
		return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
	}
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// WriteTable prints the result as a table.
func (r *BackupCompareResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "backup of a %s image (%s), %d CPUs, %s cache, median of %d rounds\n", humanize.IBytes(uint64(r.Size)), r.Image, r.CPUs, r.Cache, r.Rounds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOOL\tSECONDS\tMiB/s\tCPU s (BUSY)\tMAX RSS\tREPO SIZE\tTIME / VOLBACK\tTIME / DISK FLOOR\tSETTINGS")
	for _, run := range r.Runs {
		if run.Error != "" {
			fmt.Fprintf(tw, "%s\tfailed: %s\n", run.Tool, run.Error)
			continue
		}
		floor := "-"
		if run.FloorRatio > 0 {
			floor = fmt.Sprintf("%.2fx (floor %.2f s)", run.FloorRatio, median(run.FloorRounds))
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.0f\t%.2f (%.0f%%)\t%s\t%s\t%.2fx\t%s\t%s\n", run.Tool, run.Seconds, run.MiBps, run.CPUSeconds, 100*run.CPUBusy,
			humanize.IBytes(uint64(run.MaxRSS)), humanize.IBytes(uint64(run.RepoBytes)), run.VolbackSpeedup, floor, run.Settings)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.EncryptedSpeed > 0 {
		fmt.Fprintf(w, "encrypted backup at %.2fx the speed of the unencrypted one (median of the rounds' paired ratios)\n", r.EncryptedSpeed)
	}
	for _, run := range r.Runs {
		if run.Tool == ToolVolback && run.Error == "" {
			verdict := "within"
			if run.MaxRSS > r.MemoryBudget {
				verdict = "OVER"
			}
			fmt.Fprintf(w, "volback peak RSS %s, %s the budget of 64 MiB + %d x 2 x %s = %s\n",
				humanize.IBytes(uint64(run.MaxRSS)), verdict, r.Parallelism, humanize.IBytes(uint64(r.ChunkSize)), humanize.IBytes(uint64(r.MemoryBudget)))
		}
	}
	return nil
}

// DiskFloor writes n bytes (rounded up to 4 MiB) of random data to path
// with O_DIRECT, then fsyncs it, and returns the seconds it took: the
// fastest the disk takes what a backup of n stored bytes must write. The
// file is removed.
func DiskFloor(ctx context.Context, path string, n int64) (float64, error) {
	defer os.Remove(path)
	return diskWrite(ctx, path, n)
}

// DiskReadBack writes n bytes to path as DiskFloor does, then reads them
// back with O_DIRECT, 4 MiB at a time, as a verified restore's check does:
// the seconds of the write and of the read.
func DiskReadBack(ctx context.Context, path string, n int64) (write, read float64, err error) {
	defer os.Remove(path)
	if write, err = diskWrite(ctx, path, n); err != nil {
		return 0, 0, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	start := time.Now()
	if err := readDirect(ctx, f, n); err != nil {
		return 0, 0, err
	}
	return write, time.Since(start).Seconds(), nil
}

// readDirect reads the first n bytes of f (opened with O_DIRECT) in order,
// 4 MiB at a time, into one aligned buffer.
func readDirect(ctx context.Context, f *os.File, n int64) error {
	buf := chunkstore.AlignedBuffer(4<<20, 4<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			return fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
	return nil
}

// randomChunk returns 4 MiB of seeded random bytes in an aligned buffer:
// what the disk probes write, incompressible and O_DIRECT-ready.
func randomChunk(seed uint64) []byte {
	buf := chunkstore.AlignedBuffer(4<<20, 4<<20)
	r := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	return buf
}

// RestorePattern does a restore's disk work with none of its CPU work: a
// new file of n bytes, preallocated, filled with 4 MiB O_DIRECT writes
// by workers streams, each chunk read back with O_DIRECT right after it
// is written when verify is set, then fsync; the seconds taken.
func RestorePattern(ctx context.Context, path string, n int64, workers int, verify bool) (float64, error) {
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	const chunk = 4 << 20
	n = n / chunk * chunk
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		return 0, fmt.Errorf("preallocate %s: %w", path, err)
	}
	data := randomChunk(uint64(n))
	syscall.Sync()
	start := time.Now()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range workers {
		g.Go(func() error {
			back := chunkstore.AlignedBuffer(chunk, chunk)
			for {
				off := next.Add(chunk) - chunk
				if off >= n || gctx.Err() != nil {
					return gctx.Err()
				}
				if _, err := f.WriteAt(data, off); err != nil {
					return fmt.Errorf("write %s: %w", path, err)
				}
				if verify {
					if _, err := f.ReadAt(back, off); err != nil {
						return fmt.Errorf("read %s: %w", path, err)
					}
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	return time.Since(start).Seconds(), nil
}

// diskWrite writes n random bytes to a new file at path with O_DIRECT,
// 4 MiB at a time, then fsyncs it, and returns the seconds taken.
func diskWrite(ctx context.Context, path string, n int64) (float64, error) {
	os.Remove(path)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	buf := randomChunk(uint64(n))
	syscall.Sync()
	start := time.Now()
	for written := int64(0); written < n; written += int64(len(buf)) {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if _, err := w.Write(buf); err != nil {
			return 0, fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := w.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	return time.Since(start).Seconds(), nil
}

// turns is the order the n contenders run in round (from 1): each round
// starts one later than the one before, so none always runs first (after
// the previous round's last, or on a disk still writing back the one
// before it) and drift that follows the order cancels over the rounds.
func turns(n, round int) []int {
	out := make([]int, n)
	for k := range out {
		out[k] = (k + round - 1) % n
	}
	return out
}

// pairedRatio is the median of a[k]/b[k] over the rounds both have, so
// drift across rounds cancels; with no common round, the medians' ratio.
func pairedRatio(a, b []float64) float64 {
	n := min(len(a), len(b))
	if n == 0 {
		return 0
	}
	rs := make([]float64, n)
	for k := range n {
		rs[k] = a[k] / b[k]
	}
	return median(rs)
}
