package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qemu"
	"github.com/volback/volback/dataplane/qmp"
	"github.com/volback/volback/nbd"
)

// QEMUCompareConfig configures CompareQEMU.
type QEMUCompareConfig struct {
	Dir         string // working directory: image, repositories, sockets
	Size        int64  // size of the generated image
	Rounds      int    // rounds; the two sources take turns in each
	Parallelism int    // workers (0 = one per CPU)
	// ChangedPercent is the share of the disk changed before the
	// incremental backup measured through QEMU (default 1).
	ChangedPercent float64
}

// QEMURun is one source's full backups.
type QEMURun struct {
	Source       string    `json:"source"`
	RoundSeconds []float64 `json:"roundSeconds"`
	Seconds      float64   `json:"seconds"` // median
	MiBps        float64   `json:"mibPerSecond"`
}

// QEMUIncremental is the incremental backup through QEMU's bitmap.
type QEMUIncremental struct {
	ChangedBytes  int64   `json:"changedBytes"`
	BytesFromQEMU int64   `json:"bytesFromQemu"`
	ChunksRead    int     `json:"chunksRead"`
	Seconds       float64 `json:"seconds"`
}

// QEMUCompareResult is CompareQEMU's report.
type QEMUCompareResult struct {
	When   time.Time `json:"when"`
	CPUs   int       `json:"cpus"`
	Size   int64     `json:"size"`
	Rounds int       `json:"rounds"`
	QEMU   string    `json:"qemu"`
	Runs   []QEMURun `json:"runs"`
	// Ratio is the QEMU source's speed over volback's own export's: the
	// median of the rounds' paired ratios.
	Ratio       float64         `json:"ratio"`
	Incremental QEMUIncremental `json:"incremental"`
}

// Sources CompareQEMU measures.
const (
	SourceOwnExport = "volback export"
	SourceQEMU      = "qemu-storage-daemon"
)

// CompareQEMU backs one generated image up in full from the two sources
// volback reads, side by side: a volume volback serves itself (the live
// backup of its own NBD export), and the same image opened by a
// qemu-storage-daemon (QMP, its backup job pushing into volback's sink).
// Then it changes ChangedPercent of a qcow2 copy through the daemon's own
// NBD export and measures the incremental backup through QEMU's bitmap.
func CompareQEMU(ctx context.Context, cfg QEMUCompareConfig, log io.Writer) (*QEMUCompareResult, error) {
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		return nil, fmt.Errorf("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if cfg.ChangedPercent <= 0 {
		cfg.ChangedPercent = 1
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	img := filepath.Join(cfg.Dir, "qemu-image.raw")
	fmt.Fprintf(log, "generating %s image %s\n", humanize.IBytes(uint64(cfg.Size)), img)
	if err := GenerateImage(ctx, img, ImageSpec{Size: cfg.Size, Seed: 7}); err != nil {
		return nil, err
	}
	res := &QEMUCompareResult{When: time.Now().UTC(), CPUs: runtime.NumCPU(), Size: cfg.Size, Rounds: cfg.Rounds}
	runs := []QEMURun{{Source: SourceOwnExport}, {Source: SourceQEMU}}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, i := range turns(len(runs), round) {
			secs, version, err := qemuCompareRound(ctx, cfg, runs[i].Source, img)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", runs[i].Source, err)
			}
			if version != "" {
				res.QEMU = version
			}
			runs[i].RoundSeconds = append(runs[i].RoundSeconds, secs)
			fmt.Fprintf(log, "round %d %s: %.2f s, %.0f MiB/s\n", round, runs[i].Source, secs, float64(cfg.Size)/secs/(1<<20))
		}
	}
	ratios := make([]float64, cfg.Rounds)
	for k := range ratios {
		ratios[k] = runs[0].RoundSeconds[k] / runs[1].RoundSeconds[k]
	}
	for i := range runs {
		runs[i].Seconds = median(runs[i].RoundSeconds)
		runs[i].MiBps = float64(cfg.Size) / runs[i].Seconds / (1 << 20)
	}
	res.Runs, res.Ratio = runs, median(ratios)
	inc, err := qemuIncremental(ctx, cfg, img, log)
	if err != nil {
		return nil, fmt.Errorf("incremental: %w", err)
	}
	res.Incremental = inc
	return res, nil
}

func freshRepo(ctx context.Context, dir string) (*chunkstore.Repository, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	st, err := local.Open(dir)
	if err != nil {
		return nil, err
	}
	return chunkstore.Init(ctx, st, chunkstore.InitOptions{})
}

// storageDaemon runs qemu-storage-daemon with a QMP socket and args.
type storageDaemon struct {
	cmd *exec.Cmd
	qmp string
}

func startStorageDaemon(ctx context.Context, dir string, args ...string) (*storageDaemon, error) {
	sock := filepath.Join(dir, "qsd-qmp.sock")
	os.Remove(sock)
	all := append([]string{"--chardev", "socket,id=qmp0,path=" + sock + ",server=on,wait=off", "--monitor", "chardev=qmp0"}, args...)
	cmd := exec.CommandContext(ctx, "qemu-storage-daemon", all...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &storageDaemon{cmd: cmd, qmp: sock}
	for i := 0; ; i++ {
		if c, err := qmp.Dial(ctx, sock, ""); err == nil {
			c.Close()
			return d, nil
		}
		if i > 500 {
			d.stop()
			return nil, fmt.Errorf("qemu-storage-daemon %v did not start", all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *storageDaemon) stop() {
	_ = d.cmd.Process.Signal(os.Interrupt)
	_ = d.cmd.Wait()
}

// qemuCompareRound is one full backup of img from source, timed.
func qemuCompareRound(ctx context.Context, cfg QEMUCompareConfig, source, img string) (float64, string, error) {
	repo, err := freshRepo(ctx, filepath.Join(cfg.Dir, "qemu-repo"))
	if err != nil {
		return 0, "", err
	}
	defer repo.Close()
	switch source {
	case SourceOwnExport:
		v, err := dataplane.OpenLiveVolume("bench", img, dataplane.VolumeOptions{StateDir: cfg.Dir})
		if err != nil {
			return 0, "", err
		}
		defer v.Close()
		start := time.Now()
		if _, err := v.Backup(ctx, repo, dataplane.LiveBackupOptions{Chain: "bench", Mode: chunkstore.ModeFull, Parallelism: cfg.Parallelism, SpillDir: cfg.Dir}); err != nil {
			return 0, "", err
		}
		return time.Since(start).Seconds(), "", nil
	default:
		d, err := startStorageDaemon(ctx, cfg.Dir, "--blockdev", "driver=file,filename="+img+",node-name=file0,cache.direct=off",
			"--blockdev", "driver=raw,file=file0,node-name=disk0")
		if err != nil {
			return 0, "", err
		}
		defer d.stop()
		opts := qemu.BackupOptions{Chain: "bench", StagingDir: cfg.Dir}
		opts.Parallelism = cfg.Parallelism
		start := time.Now()
		r, err := qemu.Backup(ctx, repo, qemu.Source{QMP: d.qmp, Node: "disk0"}, opts)
		if err != nil {
			return 0, "", err
		}
		return time.Since(start).Seconds(), r.QEMU, nil
	}
}

// qemuIncremental measures an incremental backup through QEMU's bitmap
// after ChangedPercent of a qcow2 copy of img changed, in 64 KiB writes at
// random places.
func qemuIncremental(ctx context.Context, cfg QEMUCompareConfig, img string, log io.Writer) (QEMUIncremental, error) {
	var inc QEMUIncremental
	qc := filepath.Join(cfg.Dir, "qemu-image.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", img, qc).CombinedOutput(); err != nil {
		return inc, fmt.Errorf("qemu-img convert: %v: %s", err, out)
	}
	defer os.Remove(qc)
	own := filepath.Join(cfg.Dir, "qsd-nbd.sock")
	os.Remove(own)
	d, err := startStorageDaemon(ctx, cfg.Dir, "--blockdev", "driver=file,filename="+qc+",node-name=file0",
		"--blockdev", "driver=qcow2,file=file0,node-name=disk0",
		"--nbd-server", "addr.type=unix,addr.path="+own,
		"--export", "type=nbd,id=own,node-name=disk0,name=own,writable=on")
	if err != nil {
		return inc, err
	}
	defer d.stop()
	repo, err := freshRepo(ctx, filepath.Join(cfg.Dir, "qemu-repo"))
	if err != nil {
		return inc, err
	}
	defer repo.Close()
	src := qemu.Source{QMP: d.qmp, Node: "disk0"}
	opts := qemu.BackupOptions{Chain: "bench", StagingDir: cfg.Dir}
	opts.Parallelism = cfg.Parallelism
	full, err := qemu.Backup(ctx, repo, src, opts)
	if err != nil {
		return inc, err
	}
	// Change the disk through the daemon's own export.
	nc, err := nbd.Dial(ctx, "unix", own, "own", nbd.ClientOptions{})
	if err != nil {
		return inc, err
	}
	const block = 64 << 10
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, block)
	want := int64(float64(cfg.Size) * cfg.ChangedPercent / 100)
	written := map[int64]bool{}
	for int64(len(written))*block < want {
		off := r.Int64N(cfg.Size/block) * block
		if written[off] {
			continue
		}
		written[off] = true
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if err := nc.WriteAt(ctx, buf, off, false); err != nil {
			nc.Close()
			return inc, err
		}
	}
	if err := nc.Flush(ctx); err != nil {
		nc.Close()
		return inc, err
	}
	nc.Close()
	inc.ChangedBytes = int64(len(written)) * block
	opts.Parent, opts.PrevBitmap = full.Manifest, full.Bitmap
	start := time.Now()
	res, err := qemu.Backup(ctx, repo, src, opts)
	if err != nil {
		return inc, err
	}
	if res.Manifest.Mode != chunkstore.ModeIncremental {
		return inc, fmt.Errorf("the backup after the changes was %s: %s", res.Manifest.Mode, res.FullReason)
	}
	inc.Seconds = time.Since(start).Seconds()
	inc.BytesFromQEMU, inc.ChunksRead = res.BytesFromQEMU, res.Manifest.Stats.ChunksRead
	fmt.Fprintf(log, "incremental after %s changed: QEMU sent %s, %d chunks read, %.2f s\n",
		humanize.IBytes(uint64(inc.ChangedBytes)), humanize.IBytes(uint64(inc.BytesFromQEMU)), inc.ChunksRead, inc.Seconds)
	return inc, nil
}

// WriteTable prints the comparison.
func (r *QEMUCompareResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "full backup of a %s image from two sources, %d CPUs, QEMU %s, median of %d rounds\n", humanize.IBytes(uint64(r.Size)), r.CPUs, r.QEMU, r.Rounds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tSECONDS\tMiB/s\tROUNDS")
	for _, run := range r.Runs {
		fmt.Fprintf(tw, "%s\t%.2f\t%.0f\t%v\n", run.Source, run.Seconds, run.MiBps, run.RoundSeconds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "qemu-storage-daemon source at %.2fx the speed of volback's own export (median of paired rounds)\n", r.Ratio)
	i := r.Incremental
	_, err := fmt.Fprintf(w, "incremental through QEMU's bitmap after %s changed: QEMU sent %s, %d chunks read, %.2f s\n",
		humanize.IBytes(uint64(i.ChangedBytes)), humanize.IBytes(uint64(i.BytesFromQEMU)), i.ChunksRead, i.Seconds)
	return err
}
