package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
)

// AllConfig configures RunAll, the whole benchmark report.
type AllConfig struct {
	Dir     string // working directory: images, repositories, restores
	Out     string // where the report, JSON and charts go
	Quick   bool   // small image, one round: the harness checked, not the machine
	Size    int64  // image size (default 2 GiB, 64 MiB quick)
	Rounds  int    // rounds of each measurement (default 3, 1 quick)
	Volback string // this binary, which the timed runs execute
	// Keep leaves the run's working files (one subdirectory of Dir:
	// images, every tool's repository, restores) for inspection; else
	// they go when the run ends, whatever its outcome, since a 2 GiB run
	// leaves some 13 GiB.
	Keep bool
}

// Stat is a measurement's rounds and their median, minimum and maximum.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
}

func statOf(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	return Stat{Median: median(xs), Min: slices.Min(xs), Max: slices.Max(xs), Rounds: xs}
}

// Limits are the machine's, measured in the same run.
type Limits struct {
	CachedReadMiBps float64 `json:"cachedReadMibPerSecond"` // the image, from the page cache
	DiskWriteMiBps  float64 `json:"diskWriteMibPerSecond"`  // O_DIRECT writes then fsync, in the working directory
	// DiskMixedMiBps is reads and writes together: one file written as
	// DiskWriteMiBps is while another, written earlier, is read with
	// O_DIRECT, the bytes of both over the time. (A verified restore
	// reads back what it has just written, which a virtual disk may serve
	// from its host's cache: this is not its bound.)
	DiskMixedMiBps float64 `json:"diskMixedMibPerSecond"`
	// DiskReadBackMiBps is reading the DiskWriteMiBps file back right
	// after it was written, O_DIRECT, 4 MiB at a time.
	DiskReadBackMiBps float64 `json:"diskReadBackMibPerSecond"`
	// KeyMiBps is the chunk key of a default (format 3) repository,
	// XXH3-128; XXHashMiBps is format 1's two xxhash64 passes.
	KeyMiBps    float64 `json:"keyMibPerSecondPerCore"`
	XXHashMiBps float64 `json:"xxhashMibPerSecondPerCore"`
	ZstdMiBps   float64 `json:"zstdMibPerSecondPerCore"` // text, at the level backups use (fastest)
	S2MiBps     float64 `json:"s2MibPerSecondPerCore"`   // text, S2's default (fastest) level
	// S2AllMiBps is S2 on text on every CPU at once, all bytes over the
	// time: what the machine compresses when a backup keeps every CPU
	// busy (vCPUs that share cores give less than CPUs times S2MiBps).
	S2AllMiBps float64 `json:"s2MibPerSecondAllCpus"`
}

// RestoreDisk is RestorePattern over the image's data bytes with the
// restore's streams: writes alone and each chunk read back, seconds by
// round, and their paired ratio (what the disk alone charges for the
// check).
type RestoreDisk struct {
	Bytes     int64   `json:"bytes"`
	Streams   int     `json:"streams"`
	WriteOnly Stat    `json:"writeOnlySeconds"`
	ReadBack  Stat    `json:"readBackSeconds"`
	Cost      float64 `json:"cost"`
}

// RestoreRun is one tool's restores of the image.
type RestoreRun struct {
	Tool    string `json:"tool"`
	Mode    string `json:"mode"`
	Seconds Stat   `json:"seconds"`
	Error   string `json:"error,omitempty"`
}

// IncrementalRun is one tool's backup after a share of the image changed
// since its previous backup.
type IncrementalRun struct {
	Tool           string  `json:"tool"`
	ChangedPercent float64 `json:"changedPercent"`
	Seconds        float64 `json:"seconds"`
	BytesRead      int64   `json:"bytesRead,omitempty"` // volback: read from the volume
	// OfFull is Seconds over the live volume's full backup (volback's
	// changed-block map only); StoredOfFull the bytes it stored over the
	// full's: its share if both ran at the disk's rate.
	OfFull       float64 `json:"ofFull,omitempty"`
	BytesStored  int64   `json:"bytesStored,omitempty"`
	StoredOfFull float64 `json:"storedOfFull,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// Incremental backup ways.
const (
	IncVolbackCBT  = "volback (changed-block map)"
	IncVolbackRead = "volback (full read, dedup)"
	// IncVolbackCBTRuns is the changed-block map after the share changed
	// in 4 MiB runs (files written whole, a database's log) rather than
	// in scattered 64 KiB writes.
	IncVolbackCBTRuns = "volback (changed-block map), 4 MiB runs"
)

// ParallelRun is volback's full backup at one parallelismDegree.
type ParallelRun struct {
	Target      string  `json:"target"`
	Parallelism int     `json:"parallelism"`
	Seconds     Stat    `json:"seconds"`
	MiBps       float64 `json:"mibPerSecond"`
}

// AllReport is RunAll's result.
type AllReport struct {
	When    time.Time `json:"when"`
	Machine string    `json:"machine"`
	CPUs    int       `json:"cpus"`
	Size    int64     `json:"size"`
	Rounds  int       `json:"rounds"`
	Quick   bool      `json:"quick"`
	Limits  Limits    `json:"limits"`
	// Backup is the full backup by each tool, side by side.
	Backup *BackupCompareResult `json:"backup"`
	// FloorSeconds is the median time to write what volback stored with
	// O_DIRECT and fsync, right after each of its runs; FloorRatio the
	// median of the rounds' backup over floor.
	FloorSeconds float64 `json:"floorSeconds"`
	FloorRatio   float64 `json:"floorRatio"`
	// Floors is each volback variant's time over its own floor (what it
	// stored, written right after it), paired by round.
	Floors     map[string]float64 `json:"floors"`
	Restore    []RestoreRun       `json:"restore"`
	VerifyCost float64            `json:"verifyCost"` // verified over unverified, paired rounds
	// RestoreDisk is a restore's disk work without its CPU work, in the
	// same rounds (RestorePattern over the image's data).
	RestoreDisk *RestoreDisk  `json:"restoreDisk,omitempty"`
	Parallel    []ParallelRun `json:"parallel"`
	// Incremental is each tool's backup after 1% and 10% changed.
	Incremental []IncrementalRun `json:"incremental"`
	// Mount is the sequential read through volback's FUSE mount and
	// restic's.
	Mount *MountCompareResult `json:"mount,omitempty"`
	// NBD is the export side by side with nbdkit and the go-nbd server.
	NBD    *NBDResult `json:"nbd,omitempty"`
	Notes  []string   `json:"notes"`
	Charts []string   `json:"charts"`
}

// RunAll measures the machine's limits, then volback beside the tools
// users would pick instead: the full backup (restic, borg), the restore
// (verified and not; restic, borg), the full backup at each
// parallelismDegree; and writes report.md, report.json and SVG charts to
// cfg.Out. A baseline that is not installed is skipped with a note.
func RunAll(ctx context.Context, cfg AllConfig, log io.Writer) (*AllReport, error) {
	if cfg.Size == 0 {
		cfg.Size = 2 << 30
		if cfg.Quick {
			cfg.Size = 64 << 20
		}
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
		if cfg.Quick {
			cfg.Rounds = 1
		}
	}
	if cfg.Volback == "" {
		return nil, fmt.Errorf("no volback binary given")
	}
	// Absolute, because restic and borg restore in their target directory
	// (cmd.Dir) and a relative repository path would then name nothing.
	for _, d := range []*string{&cfg.Dir, &cfg.Out} {
		abs, err := filepath.Abs(*d)
		if err != nil {
			return nil, fmt.Errorf("bench directory %q: %w", *d, err)
		}
		*d = abs
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return nil, err
		}
	}
	// Each run works in a subdirectory of its own, so that removing it
	// removes only what this run made.
	work, err := os.MkdirTemp(cfg.Dir, "all-")
	if err != nil {
		return nil, fmt.Errorf("bench directory: %w", err)
	}
	cfg.Dir = work
	if cfg.Keep {
		fmt.Fprintf(log, "working files stay in %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	rep := &AllReport{When: time.Now().UTC(), Machine: machine(), CPUs: runtime.NumCPU(), Size: cfg.Size, Rounds: cfg.Rounds, Quick: cfg.Quick}
	pars := []int{1, 2, 4, 8}
	if cfg.Quick {
		pars = []int{1, 2}
	}
	steps := 8
	step := 0
	progress := func(what string) {
		step++
		fmt.Fprintf(log, "[%d/%d] %s\n", step, steps, what)
	}
	img := filepath.Join(cfg.Dir, "all-image.raw")
	progress(fmt.Sprintf("generating a %s image, measuring the machine's limits", humanize.IBytes(uint64(cfg.Size))))
	if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size, Seed: 42}); err != nil {
		return nil, err
	}
	lim, err := measureLimits(ctx, img, cfg)
	if err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	rep.Limits = lim

	tools := []string{ToolVolback, ToolVolbackZstd, ToolVolbackS2, ToolVolbackLZ4, ToolVolbackNone}
	for _, t := range []string{ToolRestic, ToolBorg, ToolQemuImg} {
		if _, err := exec.LookPath(t); err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s is not installed: its backup and restore are skipped (scripts/bench installs it)", t))
			continue
		}
		tools = append(tools, t)
	}
	progress(fmt.Sprintf("full backup by %s, %d rounds", strings.Join(tools, ", "), cfg.Rounds))
	b, err := CompareBackup(ctx, BackupCompareConfig{Dir: cfg.Dir, Image: img, Tools: tools, Volback: cfg.Volback, Rounds: cfg.Rounds, Floor: true}, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	rep.Backup = b
	rep.Floors = map[string]float64{}
	for _, r := range b.Runs {
		if strings.HasPrefix(r.Tool, ToolVolback) && r.Error == "" && r.FloorRatio > 0 {
			rep.Floors[r.Tool] = r.FloorRatio
			if r.Tool == ToolVolback {
				rep.FloorSeconds, rep.FloorRatio = median(r.FloorRounds), r.FloorRatio
			}
		}
	}

	progress(fmt.Sprintf("restore by %s, %d rounds", strings.Join(slices.DeleteFunc(slices.Clone(tools), func(t string) bool {
		return t == ToolVolbackLZ4 || t == ToolVolbackS2 || t == ToolVolbackZstd || t == ToolVolbackNone
	}), ", "), cfg.Rounds))
	rs, disk, cost, err := measureRestores(ctx, cfg, tools, img)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	rep.Restore, rep.RestoreDisk, rep.VerifyCost = rs, disk, cost

	baselines := slices.DeleteFunc(slices.Clone(tools), func(t string) bool { return strings.HasPrefix(t, ToolVolback) || t == ToolQemuImg })
	progress("incremental backups after 1% and 10% changed: volback with its changed-block map and by a full read" + strings.Join(append([]string{""}, baselines...), ", "))
	inc, err := measureIncrementals(ctx, cfg, tools, img)
	if err != nil {
		return nil, fmt.Errorf("incremental: %w", err)
	}
	rep.Incremental = inc

	progress(fmt.Sprintf("full backup at parallelismDegree %v, local ImageStore", pars))
	for _, p := range pars {
		var secs []float64
		for range cfg.Rounds {
			s, err := timedBackup(ctx, filepath.Join(cfg.Dir, "all-par"), img, cfg.Size, p)
			if err != nil {
				return nil, fmt.Errorf("parallelism %d: %w", p, err)
			}
			secs = append(secs, s)
		}
		st := statOf(secs)
		rep.Parallel = append(rep.Parallel, ParallelRun{Target: "local", Parallelism: p, Seconds: st, MiBps: float64(cfg.Size) / st.Median / (1 << 20)})
	}
	rep.Notes = append(rep.Notes, "the NFS and S3 targets at each parallelismDegree: `volback bench s3` and `scripts/bench targets`; QEMU sources: `volback bench qemu`")

	if _, err := exec.LookPath("fusermount3"); err != nil || os.Geteuid() != 0 {
		rep.Notes = append(rep.Notes, "FUSE mounts need fusermount3 and root here: the mount read is not measured")
		steps--
	} else {
		mtools := []string{ToolVolback}
		if slices.Contains(tools, ToolRestic) {
			mtools = append(mtools, ToolRestic)
		}
		progress("sequential read through the FUSE mount: " + strings.Join(mtools, ", "))
		mr, err := CompareMount(ctx, MountCompareConfig{Dir: cfg.Dir, Image: img, Size: cfg.Size, Tools: mtools, Volback: cfg.Volback, Rounds: cfg.Rounds}, io.Discard)
		if err != nil {
			return nil, fmt.Errorf("mount: %w", err)
		}
		rep.Mount = mr
	}

	servers := []string{ServerVolback, ServerGoNBD}
	if _, err := exec.LookPath("nbdkit"); err == nil {
		servers = append(servers, ServerNbdkit)
	} else {
		rep.Notes = append(rep.Notes, "nbdkit is not installed: the NBD comparison runs without it")
	}
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		rep.Notes = append(rep.Notes, "nbdcopy (libnbd-bin) is not installed: the NBD export is not measured")
		steps--
	} else {
		if _, err := exec.LookPath("fio"); err != nil {
			rep.Notes = append(rep.Notes, "fio is not installed: no 4 KiB random-write IOPS (scripts/bench nbd installs it)")
		}
		progress(fmt.Sprintf("NBD export: %s, nbdcopy write and read, 4 KiB random writes at QD32 and QD1; guest writes during a live backup", strings.Join(servers, ", ")))
		nsize, fio := min(cfg.Size, 1<<30), 10*time.Second
		if cfg.Quick {
			fio = 2 * time.Second
		}
		nb, err := CompareNBD(ctx, NBDConfig{Dir: cfg.Dir, Size: nsize, Rounds: cfg.Rounds, Servers: servers, Volback: cfg.Volback, FioRuntime: fio, LiveBackup: true}, io.Discard)
		if err != nil {
			return nil, fmt.Errorf("nbd: %w", err)
		}
		rep.NBD = nb
		os.Remove(filepath.Join(cfg.Dir, "nbd-src.raw"))
		os.Remove(filepath.Join(cfg.Dir, "nbd-target.raw"))
	}

	progress("writing the report and charts to " + cfg.Out)
	charts, err := writeCharts(rep, cfg.Out)
	if err != nil {
		return nil, fmt.Errorf("charts: %w", err)
	}
	rep.Charts = charts
	if err := writeReport(rep, cfg.Out); err != nil {
		return nil, err
	}
	os.Remove(img)
	return rep, nil
}

// machine describes this machine for the report.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	mem := ""
	if syscall.Sysinfo(&si) == nil {
		mem = ", " + humanize.IBytes(si.Totalram*uint64(si.Unit)) + " RAM"
	}
	return fmt.Sprintf("%d x %s%s, %s/%s", runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH)
}

// measureLimits reads the image from the cache, writes with O_DIRECT and
// fsync, and hashes and compresses on one core.
func measureLimits(ctx context.Context, img string, cfg AllConfig) (Limits, error) {
	var l Limits
	f, err := os.Open(img)
	if err != nil {
		return l, err
	}
	buf := make([]byte, 4<<20)
	_, _ = io.CopyBuffer(io.Discard, f, buf) // warm
	start := time.Now()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return l, err
	}
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	f.Close()
	if err != nil {
		return l, err
	}
	l.CachedReadMiBps = float64(n) / time.Since(start).Seconds() / (1 << 20)

	// The disk: as much as the image, O_DIRECT, then fsync; then the same
	// again while reading that file back with O_DIRECT, as a verified
	// restore does.
	path := filepath.Join(cfg.Dir, "all-disk-write.raw")
	secs, rsecs, err := DiskReadBack(ctx, path, cfg.Size)
	if err != nil {
		return l, err
	}
	l.DiskWriteMiBps = float64(cfg.Size) / secs / (1 << 20)
	l.DiskReadBackMiBps = float64(cfg.Size) / rsecs / (1 << 20)
	if l.DiskMixedMiBps, err = diskMixed(ctx, cfg.Dir, cfg.Size); err != nil {
		return l, err
	}
	r := rand.New(rand.NewPCG(1, 2))

	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	// Chunk by chunk, as backups key them, over more than a cache holds.
	keyRate := func(h chunkstore.Hasher) float64 {
		start := time.Now()
		for range 4 {
			for off := 0; off < len(data); off += 4 << 20 {
				_ = h.Key(data[off : off+4<<20])
			}
		}
		return 4 * 64 / time.Since(start).Seconds()
	}
	l.KeyMiBps = keyRate(chunkstore.Hasher{Seed1: 1, XXH3: true})
	l.XXHashMiBps = keyRate(chunkstore.Hasher{Seed1: 1, Seed2: 2})

	text := make([]byte, 32<<20)
	fillText(r, text)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		return l, err
	}
	defer enc.Close()
	out := make([]byte, 0, len(text))
	start = time.Now()
	for off := 0; off < len(text); off += 4 << 20 {
		out = enc.EncodeAll(text[off:off+4<<20], out[:0])
	}
	l.ZstdMiBps = 32 / time.Since(start).Seconds()
	start = time.Now()
	for off := 0; off < len(text); off += 4 << 20 {
		out = s2.Encode(out[:cap(out)], text[off:off+4<<20])
	}
	l.S2MiBps = 32 / time.Since(start).Seconds()
	l.S2AllMiBps = s2AllCPUs(text)
	return l, nil
}

// s2AllCPUs compresses text with S2 on every CPU at once, 4 MiB at a time
// as backups do, and returns all the bytes over the time, in MiB/s.
func s2AllCPUs(text []byte) float64 {
	n := runtime.NumCPU()
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, s2.MaxEncodedLen(4<<20))
			for range 2 {
				for off := 0; off+4<<20 <= len(text); off += 4 << 20 {
					out = s2.Encode(out[:cap(out)], text[off:off+4<<20])
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) * 2 * float64(len(text)) / (1 << 20) / time.Since(start).Seconds()
}

// measureRestores restores the image from each tool's repository (left by
// CompareBackup), volback verified and not in turns, the rest after.
func measureRestores(ctx context.Context, cfg AllConfig, tools []string, img string) ([]RestoreRun, *RestoreDisk, float64, error) {
	out := filepath.Join(cfg.Dir, "all-restored")
	repo := filepath.Join(cfg.Dir, "repo-"+ToolVolback)
	id, err := lastBackup(ctx, repo)
	if err != nil {
		return nil, nil, 0, err
	}
	type job struct {
		run  *RestoreRun
		args []string
		env  []string
		dir  bool // restores into a directory
	}
	runs := []*RestoreRun{{Tool: ToolVolback, Mode: "verified (default)"}, {Tool: ToolVolback, Mode: "--no-verify"}}
	jobs := []job{
		{runs[0], []string{cfg.Volback, "--quiet", "restore", "--repo", repo, id, out}, os.Environ(), false},
		{runs[1], []string{cfg.Volback, "--quiet", "restore", "--no-verify", "--repo", repo, id, out}, os.Environ(), false},
	}
	for _, t := range tools {
		switch t {
		case ToolRestic:
			r := &RestoreRun{Tool: t, Mode: "restore latest"}
			runs = append(runs, r)
			jobs = append(jobs, job{r, []string{"restic", "restore", "latest", "--repo", filepath.Join(cfg.Dir, "repo-restic"), "--target", out},
				baselineEnv(cfg.Dir, t), true})
		case ToolBorg:
			r := &RestoreRun{Tool: t, Mode: "extract"}
			runs = append(runs, r)
			jobs = append(jobs, job{r, []string{"borg", "extract", filepath.Join(cfg.Dir, "repo-borg") + "::bench"},
				baselineEnv(cfg.Dir, t), true})
		case ToolQemuImg:
			r := &RestoreRun{Tool: t, Mode: "convert -O raw, flushed"}
			runs = append(runs, r)
			jobs = append(jobs, job{r, []string{"qemu-img", "convert", "-O", "raw", "-t", "writeback", filepath.Join(cfg.Dir, "repo-"+ToolQemuImg, "backup.qcow2"), out},
				os.Environ(), false})
		}
	}
	secs := make([][]float64, len(jobs))
	disk := &RestoreDisk{Bytes: cfg.Size / 4 * 3, Streams: dataplane.RestoreWorkers()}
	var diskW, diskR []float64
	for round := 1; round <= cfg.Rounds; round++ {
		// The same disk work without decoding or hashing, in turns.
		for _, k := range turns(2, round) {
			verify := k == 1
			s, err := RestorePattern(ctx, filepath.Join(cfg.Dir, "all-restore-pattern.raw"), disk.Bytes, disk.Streams, verify)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("restore pattern: %w", err)
			}
			if verify {
				diskR = append(diskR, s)
			} else {
				diskW = append(diskW, s)
			}
		}
		for _, i := range turns(len(jobs), round) {
			j := jobs[i]
			if j.run.Error != "" {
				continue
			}
			if err := os.RemoveAll(out); err != nil {
				return nil, nil, 0, err
			}
			args := j.args
			if j.dir {
				if err := os.MkdirAll(out, 0o755); err != nil {
					return nil, nil, 0, err
				}
			}
			syscall.Sync()
			start := time.Now()
			cmd := exec.CommandContext(ctx, args[0], args[1:]...)
			cmd.Env = j.env
			if j.dir {
				cmd.Dir = out
			}
			if b, err := cmd.CombinedOutput(); err != nil {
				j.run.Error = fmt.Sprintf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(b)))
				continue
			}
			// Timed until what it wrote is on the disk: volback and
			// qemu-img sync before they exit, restic and borg leave
			// the page cache to the kernel, and a restore is not done
			// until it would survive a crash.
			syscall.Sync()
			secs[i] = append(secs[i], time.Since(start).Seconds())
		}
	}
	os.RemoveAll(out)
	var res []RestoreRun
	for i, r := range runs {
		r.Seconds = statOf(secs[i])
		res = append(res, *r)
	}
	var cost []float64
	for k := range min(len(secs[0]), len(secs[1])) {
		cost = append(cost, secs[0][k]/secs[1][k])
	}
	disk.WriteOnly, disk.ReadBack, disk.Cost = statOf(diskW), statOf(diskR), pairedRatio(diskR, diskW)
	if len(cost) == 0 {
		return res, disk, 0, nil
	}
	return res, disk, median(cost), nil
}

// measureIncrementals changes 1%, then 10% more, of the image in 64 KiB
// writes at random places, the same writes going to a live volume that
// holds a copy of it, and after each measures: volback's incremental
// through the volume's changed-block map; volback's backup of the file
// (every byte read, unchanged chunks deduplicated); restic and borg
// backing the file up again into the repositories of the full backups.
// Then the same shares again in 4 MiB runs, through the map alone. Each
// incremental through the map is also given as a share of the volume's
// full backup.
func measureIncrementals(ctx context.Context, cfg AllConfig, tools []string, img string) ([]IncrementalRun, error) {
	livePath := filepath.Join(cfg.Dir, "all-live.raw")
	if err := copyFile(img, livePath); err != nil {
		return nil, err
	}
	defer os.Remove(livePath)
	v, err := dataplane.OpenLiveVolume("bench", livePath, dataplane.VolumeOptions{StateDir: cfg.Dir})
	if err != nil {
		return nil, err
	}
	defer v.Close()
	liveRepo, err := freshRepo(ctx, filepath.Join(cfg.Dir, "all-live-repo"))
	if err != nil {
		return nil, err
	}
	defer liveRepo.Close()
	syscall.Sync()
	fullStart := time.Now()
	fm, err := v.Backup(ctx, liveRepo, dataplane.LiveBackupOptions{Chain: "bench", Mode: chunkstore.ModeFull, SpillDir: cfg.Dir})
	if err != nil {
		return nil, err
	}
	full := time.Since(fullStart).Seconds()
	fullStored := float64(max(1, fm.Stats.BytesStored))
	st, err := local.Open(filepath.Join(cfg.Dir, "repo-"+ToolVolback))
	if err != nil {
		return nil, err
	}
	fileRepo, err := chunkstore.Open(ctx, st)
	if err != nil {
		return nil, err
	}
	defer fileRepo.Close()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []IncrementalRun
	// liveIncremental flushes the live volume and times its incremental
	// through the changed-block map.
	liveIncremental := func(tool string, pct float64) error {
		if err := v.Flush(ctx); err != nil {
			return err
		}
		syscall.Sync()
		start := time.Now()
		m, err := v.Backup(ctx, liveRepo, dataplane.LiveBackupOptions{Chain: "bench", SpillDir: cfg.Dir})
		if err != nil {
			return err
		}
		secs := time.Since(start).Seconds()
		out = append(out, IncrementalRun{Tool: tool, ChangedPercent: pct, Seconds: secs, BytesRead: m.Stats.BytesRead, OfFull: secs / full,
			BytesStored: m.Stats.BytesStored, StoredOfFull: float64(m.Stats.BytesStored) / fullStored})
		return nil
	}
	r := rand.New(rand.NewPCG(5, 6))
	const block = 64 << 10
	buf := make([]byte, block)
	for _, pct := range []float64{1, 10} {
		for n := int64(0); n < int64(float64(cfg.Size)*pct/100); n += block {
			off := r.Int64N(cfg.Size/block) * block
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			if _, err := f.WriteAt(buf, off); err != nil {
				return nil, err
			}
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				return nil, err
			}
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if err := liveIncremental(IncVolbackCBT, pct); err != nil {
			return nil, err
		}
		start := time.Now()
		m, err := dataplane.Backup(ctx, fileRepo, f, cfg.Size, dataplane.BackupOptions{VolumeID: "bench"})
		if err != nil {
			return nil, err
		}
		out = append(out, IncrementalRun{Tool: IncVolbackRead, ChangedPercent: pct, Seconds: time.Since(start).Seconds(), BytesRead: m.Stats.BytesRead})
		for _, t := range tools {
			var args []string
			switch t {
			case ToolRestic:
				args = []string{"restic", "backup", "--quiet", "--repo", filepath.Join(cfg.Dir, "repo-restic"), img}
			case ToolBorg:
				args = []string{"borg", "create", filepath.Join(cfg.Dir, "repo-borg") + fmt.Sprintf("::inc%.0f", pct), img}
			default:
				continue
			}
			run := IncrementalRun{Tool: t, ChangedPercent: pct}
			tm, err := runTimed(ctx, baselineEnv(cfg.Dir, t), args)
			if err != nil {
				run.Error = err.Error()
			}
			run.Seconds = tm.wall.Seconds()
			out = append(out, run)
		}
	}
	// The same shares again, written in 4 MiB runs at random (4 KiB
	// aligned) places: through the changed-block map only.
	runBuf := make([]byte, 4<<20)
	for _, pct := range []float64{1, 10} {
		for n := int64(0); n < int64(float64(cfg.Size)*pct/100); n += int64(len(runBuf)) {
			off := r.Int64N((cfg.Size-int64(len(runBuf)))/4096+1) * 4096
			for i := 0; i+8 <= len(runBuf); i += 8 {
				binary.LittleEndian.PutUint64(runBuf[i:], r.Uint64())
			}
			if err := v.WriteAt(ctx, runBuf, off, false); err != nil {
				return nil, err
			}
		}
		if err := liveIncremental(IncVolbackCBTRuns, pct); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func copyFile(from, to string) error {
	out, err := exec.Command("cp", "--sparse=always", from, to).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp %s %s: %v: %s", from, to, err, out)
	}
	return nil
}

// lastBackup returns the id of a backup in the local repository at dir.
func lastBackup(ctx context.Context, dir string) (string, error) {
	st, err := local.Open(dir)
	if err != nil {
		return "", err
	}
	r, err := chunkstore.Open(ctx, st)
	if err != nil {
		return "", err
	}
	defer r.Close()
	ids, err := r.ListBackups(ctx)
	if err != nil || len(ids) == 0 {
		return "", fmt.Errorf("no backup in %s: %v", dir, err)
	}
	return ids[0], nil
}

// timedBackup is one full backup of img into a fresh local repository.
func timedBackup(ctx context.Context, dir, img string, size int64, parallelism int) (float64, error) {
	repo, err := freshRepo(ctx, dir)
	if err != nil {
		return 0, err
	}
	defer repo.Close()
	f, err := os.Open(img)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	syscall.Sync()
	start := time.Now()
	if _, err := dataplane.Backup(ctx, repo, f, size, dataplane.BackupOptions{VolumeID: "bench", Parallelism: parallelism}); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// writeReport writes report.json and report.md.
func writeReport(r *AllReport, out string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "report.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "report.md"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := r.WriteMarkdown(f); err != nil {
		return err
	}
	return f.Close()
}

// WriteTable prints the report as Markdown (the CLI's table form).
func (r *AllReport) WriteTable(w io.Writer) error { return r.WriteMarkdown(w) }

// WriteMarkdown writes the report's tables.
func (r *AllReport) WriteMarkdown(w io.Writer) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	quick := ""
	if r.Quick {
		quick = " (--quick: the harness checked, not the machine)"
	}
	p("# volback benchmark report%s\n\n", quick)
	p("%s; %s image (half random, a quarter text, a quarter zeros); %d rounds, figures are medians [min-max]; %s.\n\n",
		r.Machine, humanize.IBytes(uint64(r.Size)), r.Rounds, r.When.Format(time.RFC3339))
	p("## The machine's limits, in this run\n\n| what | MiB/s |\n|---|---|\n")
	p("| cached read of the image | %.0f |\n| disk write, O_DIRECT + fsync | %.0f |\n| disk read back of that write, O_DIRECT | %.0f |\n| disk write and read at once, both counted | %.0f |\n| chunk key (XXH3-128, format 3), one core | %.0f |\n| chunk key (two xxhash64, format 1), one core | %.0f |\n| zstd (text), one core | %.0f |\n| S2 (text), one core | %.0f |\n| S2 (text), all %d CPUs at once | %.0f |\n\n",
		r.Limits.CachedReadMiBps, r.Limits.DiskWriteMiBps, r.Limits.DiskReadBackMiBps, r.Limits.DiskMixedMiBps, r.Limits.KeyMiBps, r.Limits.XXHashMiBps, r.Limits.ZstdMiBps, r.Limits.S2MiBps, r.CPUs, r.Limits.S2AllMiBps)
	p("## Full backup\n\n| tool | seconds | MiB/s | stored | image / stored | CPU s | CPUs busy | x volback | x disk floor | settings |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var vb *ToolRun
	for i, t := range r.Backup.Runs {
		if t.Error != "" {
			p("| %s | failed: %s | | | | | | | | |\n", t.Tool, oneLine(t.Error))
			continue
		}
		if t.Tool == ToolVolback {
			vb = &r.Backup.Runs[i]
		}
		st := statOf(t.RoundSeconds)
		floor := "-"
		if t.FloorRatio > 0 {
			floor = fmt.Sprintf("%.2f", t.FloorRatio)
		}
		p("| %s | %.2f [%.2f-%.2f] | %.0f | %s | %.2f | %.2f | %.0f%% | %.2f | %s | %s |\n", t.Tool, st.Median, st.Min, st.Max, t.MiBps,
			humanize.IBytes(uint64(t.RepoBytes)), float64(r.Size)/float64(max(1, t.RepoBytes)), t.CPUSeconds, 100*t.CPUBusy, t.VolbackSpeedup, floor, t.Settings)
	}
	if r.FloorSeconds > 0 {
		p("\nx volback: the tool's time over volback's, the median of the rounds' ratios. x disk floor: the run over writing what it stored (O_DIRECT, fsync) right after it, paired by round; volback's floor took %.2f s, volback %.2fx it. CPU s: user and system time; CPUs busy: that over the wall time of all %d CPUs.\n", r.FloorSeconds, r.FloorRatio, r.CPUs)
	}
	if cpu := r.CPUFloorSeconds(); cpu > 0 && r.FloorSeconds > 0 {
		p("\nThe CPU floor: the image's text quarter through S2 on all CPUs at once (the limits above) takes %.2f s, %.2fx the disk floor; a backup that compresses cannot be faster than either, and also keys, copies and writes every byte.", cpu, cpu/r.FloorSeconds)
		if vb != nil && vb.CPUSeconds > 0 {
			// The whole of the backup's CPU work spread over every CPU
			// is the floor its own work sets, whatever the disk does.
			work := vb.CPUSeconds / float64(r.CPUs)
			p(" All of volback's CPU work (%.2f CPU s) spread over the %d CPUs takes %.2f s, %.2fx the disk floor; its backup took %.2fx that.", vb.CPUSeconds, r.CPUs, work, work/r.FloorSeconds, vb.Seconds/work)
		}
		p("\n")
	}
	for _, t := range r.Backup.Runs {
		if t.Tool == ToolVolbackNone && t.Error == "" && t.FloorRatio > 0 && vb != nil && vb.RepoBytes > 0 {
			p("\nWithout compression (volback-none) the backup stores %s (%.2fx the default's) in %.2f s, %.2fx its own disk floor: what the default adds over its floor is the compressing, which saves %.0f%% of the bytes.\n",
				humanize.IBytes(uint64(t.RepoBytes)), float64(t.RepoBytes)/float64(vb.RepoBytes), t.Seconds, t.FloorRatio, 100*(1-float64(vb.RepoBytes)/float64(t.RepoBytes)))
		}
	}
	p("\n## Restore (each timed until a sync(2) after it returns: until what it wrote is on the disk)\n\n| tool | mode | seconds |\n|---|---|---|\n")
	for _, x := range r.Restore {
		if x.Error != "" {
			p("| %s | %s | failed: %s |\n", x.Tool, x.Mode, oneLine(x.Error))
			continue
		}
		p("| %s | %s | %.2f [%.2f-%.2f] |\n", x.Tool, x.Mode, x.Seconds.Median, x.Seconds.Min, x.Seconds.Max)
	}
	if r.VerifyCost > 0 {
		p("\nA verified restore costs %.2fx an unverified one (median of paired rounds): each chunk is read back from the disk (O_DIRECT) while later ones are written.\n", r.VerifyCost)
		if d := r.RestoreDisk; d != nil && d.Cost > 0 {
			p("\nThe disk alone: the same work with no fetching, decoding or hashing (%s of data in 4 MiB O_DIRECT writes by %d streams into a preallocated file, then fsync) took %.2f s [%.2f-%.2f] writing only and %.2f s [%.2f-%.2f] with each chunk read back after it is written: the disk charges the check %.2fx (paired rounds) before the CPU does anything.\n",
				humanize.IBytes(uint64(d.Bytes)), d.Streams, d.WriteOnly.Median, d.WriteOnly.Min, d.WriteOnly.Max, d.ReadBack.Median, d.ReadBack.Min, d.ReadBack.Max, d.Cost)
		}
	}
	for _, x := range r.Restore {
		if x.Tool != ToolVolback && x.Error == "" && len(r.Restore) > 0 && r.Restore[0].Error == "" {
			p("\n%s's restore takes %.2fx volback's verified one (median of paired rounds).\n", x.Tool, pairedRatio(x.Seconds.Rounds, r.Restore[0].Seconds.Rounds))
		}
	}
	if len(r.Incremental) > 0 {
		p("\n## Incremental backup after a share of the image changed (64 KiB writes at random places, unless the tool says 4 MiB runs)\n\n| tool | changed | seconds | of the live full backup | read from the volume | stored, of the full's |\n|---|---|---|---|---|---|\n")
		for _, x := range r.Incremental {
			if x.Error != "" {
				p("| %s | %.0f%% | failed: %s | | | |\n", x.Tool, x.ChangedPercent, oneLine(x.Error))
				continue
			}
			read, of, stored := "", "", ""
			if x.BytesRead > 0 {
				read = humanize.IBytes(uint64(x.BytesRead))
			}
			if x.OfFull > 0 {
				of = fmt.Sprintf("%.1f%%", 100*x.OfFull)
			}
			if x.StoredOfFull > 0 {
				stored = fmt.Sprintf("%s, %.1f%%", humanize.IBytes(uint64(x.BytesStored)), 100*x.StoredOfFull)
			}
			p("| %s | %.0f%% | %.2f | %s | %s | %s |\n", x.Tool, x.ChangedPercent, x.Seconds, of, read, stored)
		}
		p("\nStored, of the full's: the incremental's share if both ran at the disk's rate. Changes in 4 MiB runs at 4 KiB-aligned places straddle two 4 MiB chunks, so about twice the changed bytes are stored.\n")
	}
	p("\n## Full backup by parallelismDegree\n\n| target | parallelismDegree | seconds | MiB/s |\n|---|---|---|---|\n")
	for _, x := range r.Parallel {
		p("| %s | %d | %.2f [%.2f-%.2f] | %.0f |\n", x.Target, x.Parallelism, x.Seconds.Median, x.Seconds.Min, x.Seconds.Max, x.MiBps)
	}
	if r.Mount != nil {
		p("\n## Sequential read of the image through a FUSE mount of its backup (MB/s)\n\n| tool | first byte, s | fresh, page cache dropped | repository cached | re-read |\n|---|---|---|---|---|\n")
		for _, m := range r.Mount.Runs {
			if m.Error != "" {
				p("| %s | failed: %s | | | |\n", m.Tool, oneLine(m.Error))
				continue
			}
			p("| %s | %.2f | %.0f | %.0f | %.0f |\n", m.Tool, m.FirstByteSeconds, m.ColdMBps, m.WarmMBps, m.CachedMBps)
		}
	}
	if r.NBD != nil {
		p("\n## NBD export (%s, nbdcopy with %d connections; 4 KiB random writes through volback's client)\n\n| server | first write MiB/s | write MiB/s | read MiB/s | IOPS at QD32 | QD1 p50 µs | QD1 p99 µs | fio QD32 IOPS |\n|---|---|---|---|---|---|---|---|\n",
			humanize.IBytes(uint64(r.NBD.Size)), r.NBD.Connections)
		for _, sv := range r.NBD.Servers {
			cell := func(xs []float64) string {
				if len(xs) == 0 {
					return "-"
				}
				st := statOf(xs)
				return fmt.Sprintf("%.0f [%.0f-%.0f]", st.Median, st.Min, st.Max)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", sv.Server, cell(sv.FirstWriteMiBps), cell(sv.WriteMiBps), cell(sv.ReadMiBps), cell(sv.QD32IOPS),
				cell(sv.QD1P50us), cell(sv.QD1P99us), cell(sv.RandWriteIOPS))
			for _, e := range sv.Errors {
				p("|  | failed: %s | | | | | | |\n", oneLine(e))
			}
		}
		if len(r.NBD.Servers) > 1 && r.NBD.Servers[0].Server == ServerVolback {
			vb := r.NBD.Servers[0]
			p("\n")
			for _, sv := range r.NBD.Servers[1:] {
				// A measure either side lacks (fio not installed, a
				// failed round) prints as "-", never as 0x.
				x := func(a, b []float64) string {
					if q := pairedRatio(a, b); q > 0 && !math.IsInf(q, 0) {
						return fmt.Sprintf("%.2fx", q)
					}
					return "-"
				}
				p("volback over %s, the median of the rounds' ratios (above 1: volback ahead): first write %s, write %s, read %s, QD32 IOPS %s, fio IOPS %s, QD1 latency p50 %s, p99 %s.\n\n", sv.Server,
					x(vb.FirstWriteMiBps, sv.FirstWriteMiBps), x(vb.WriteMiBps, sv.WriteMiBps), x(vb.ReadMiBps, sv.ReadMiBps),
					x(vb.QD32IOPS, sv.QD32IOPS), x(vb.RandWriteIOPS, sv.RandWriteIOPS), x(sv.QD1P50us, vb.QD1P50us), x(sv.QD1P99us, vb.QD1P99us))
			}
		}
	}
	if r.NBD != nil && r.NBD.Live != nil {
		l := r.NBD.Live
		p("\n## Guest writes during a live backup (the export above, a full backup of it into a repository on the same disk)\n\n| writes | alone | during the backup | kept | backup overlapped them |\n|---|---|---|---|---|\n")
		p("| nbdcopy, MiB/s | %.0f | %.0f | %.0f%% | %v (backup %.2f s) |\n", l.UnloadedMiBps, l.DuringBackupMiBps, 100*l.Ratio, l.Overlapped, l.BackupSeconds)
		if l.RandWriteIOPSAlone > 0 {
			p("| fio 4 KiB random, QD32, IOPS | %.0f | %.0f | %.0f%% | %v |\n", l.RandWriteIOPSAlone, l.RandWriteIOPSDuring, 100*l.RandWriteRatio, l.RandWriteOverlapped)
		}
	}
	if len(r.Charts) > 0 {
		p("\n## Charts\n\n")
		for _, c := range r.Charts {
			p("![%s](%s)\n\n", strings.TrimSuffix(c, ".svg"), c)
		}
	}
	if len(r.Notes) > 0 {
		p("## Notes\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
	}
	return nil
}

// CPUFloorSeconds is the time the image's text quarter takes through S2
// on all CPUs at once: a bound on a compressing backup as the disk floor
// is on one that writes. Zero without the limit measured.
func (r *AllReport) CPUFloorSeconds() float64 {
	if r.Limits.S2AllMiBps <= 0 {
		return 0
	}
	return float64(r.Size) / 4 / (1 << 20) / r.Limits.S2AllMiBps
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

// diskMixed writes a file of size bytes with O_DIRECT while reading another
// of the same size with O_DIRECT, and returns both byte counts over the
// time both took, in MiB/s.
func diskMixed(ctx context.Context, dir string, size int64) (float64, error) {
	src := filepath.Join(dir, "all-disk-read.raw")
	if err := GenerateImage(ctx, src, ImageSpec{Size: size, Pattern: "r", Seed: 3}); err != nil {
		return 0, err
	}
	defer os.Remove(src)
	f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	syscall.Sync()
	start := time.Now()
	rerr := make(chan error, 1)
	go func() { rerr <- readDirect(ctx, f, size) }()
	_, werr := DiskFloor(ctx, filepath.Join(dir, "all-disk-write.raw"), size)
	if err := <-rerr; err != nil {
		return 0, err
	}
	if werr != nil {
		return 0, werr
	}
	return 2 * float64(size) / time.Since(start).Seconds() / (1 << 20), nil
}
