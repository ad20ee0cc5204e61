package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/volback/volback/nbd"
)

// NBD servers CompareNBD can run.
const (
	ServerVolback = "volback"
	ServerNbdkit  = "nbdkit"
	ServerGoNBD   = "go-nbd"
)

// NBDConfig configures CompareNBD.
type NBDConfig struct {
	Dir         string
	Size        int64    // export size; the copy workload writes all of it
	Rounds      int      // rounds; servers take turns in each
	Servers     []string // servers to compare
	Volback     string   // path of the volback binary
	Connections int      // nbdcopy connections (default 4)
	FioRuntime  time.Duration
	// LiveBackup also measures volback's write throughput while a live
	// backup of the same volume runs.
	LiveBackup bool
	// Settle is the wait between freeing the previous target's pages
	// and the first write (default 3 s; negative: none). A guest whose
	// free pages go back to the host (virtio-balloon free page
	// reporting, 2 s after they are freed) has them faulted in again on
	// first touch: a copy that starts sooner reuses pages still mapped
	// and runs up to three times faster than one that starts later,
	// whichever server it writes to. After the wait every server starts
	// from the same state.
	Settle time.Duration
}

// NBDServerResult holds one server's figures, one per round.
type NBDServerResult struct {
	Server string `json:"server"`
	// FirstWriteMiBps is nbdcopy into the fresh sparse target, whose
	// blocks the file system allocates as they come (noisy on a shared
	// disk); WriteMiBps is the same copy again over the written target,
	// as a guest rewrites its allocated volume.
	FirstWriteMiBps []float64 `json:"firstWriteMiBps"`
	WriteMiBps      []float64 `json:"writeMiBps"`
	ReadMiBps       []float64 `json:"readMiBps"`
	RandWriteIOPS   []float64 `json:"randWriteIops"`
	// Measured with volback's own NBD client (no fio needed): 4 KiB
	// random writes at queue depth 32, and the latency of 4 KiB writes at
	// queue depth 1, median and 99th percentile, in microseconds.
	QD32IOPS []float64 `json:"qd32Iops"`
	QD1P50us []float64 `json:"qd1P50Microseconds"`
	QD1P99us []float64 `json:"qd1P99Microseconds"`
	Errors   []string  `json:"errors,omitempty"`
}

// LiveBackupResult compares write throughput without and during a backup.
type LiveBackupResult struct {
	UnloadedMiBps     float64 `json:"unloadedMiBps"`
	DuringBackupMiBps float64 `json:"duringBackupMiBps"`
	Ratio             float64 `json:"ratio"`
	BackupSeconds     float64 `json:"backupSeconds"`
	Overlapped        bool    `json:"overlapped"`
	// The same for fio 4 KiB random writes at queue depth 32.
	RandWriteIOPSAlone  float64 `json:"randWriteIopsAlone"`
	RandWriteIOPSDuring float64 `json:"randWriteIopsDuring"`
	RandWriteRatio      float64 `json:"randWriteRatio"`
	RandWriteOverlapped bool    `json:"randWriteOverlapped"`
}

// NBDResult is CompareNBD's report.
type NBDResult struct {
	When        time.Time         `json:"when"`
	Size        int64             `json:"size"`
	Connections int               `json:"connections"`
	Rounds      int               `json:"rounds"`
	Servers     []NBDServerResult `json:"servers"`
	Live        *LiveBackupResult `json:"live,omitempty"`
}

type nbdServer struct {
	cmd    *exec.Cmd
	uri    string
	sock   string
	export string
}

func (s *nbdServer) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

func startNBDServer(ctx context.Context, cfg NBDConfig, name, file string) (*nbdServer, error) {
	sockDir := filepath.Join(cfg.Dir, "sock-"+name)
	os.RemoveAll(sockDir)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "nbd.sock")
	var cmd *exec.Cmd
	uri := "nbd+unix:///bench?socket=" + sock
	switch name {
	case ServerVolback:
		cmd = exec.CommandContext(ctx, cfg.Volback, "serve", "--state-dir", sockDir, "--volume", "bench="+file)
	case ServerNbdkit:
		cmd = exec.CommandContext(ctx, "nbdkit", "--foreground", "--unix", sock, "file", "file="+file)
		uri = "nbd+unix:///?socket=" + sock
	case ServerGoNBD:
		cmd = exec.CommandContext(ctx, cfg.Volback, "bench", "gonbd-server", "--file", file, "--socket", sock)
	default:
		return nil, fmt.Errorf("unknown NBD server %q (want volback, nbdkit or go-nbd)", name)
	}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("%s did not listen on %s", name, sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	export := "bench"
	if name == ServerNbdkit {
		export = ""
	}
	return &nbdServer{cmd: cmd, uri: uri, sock: sock, export: export}, nil
}

// sleepCtx waits d (nothing if d <= 0) or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// timedRun runs a command with a timeout and returns its wall time.
func timedRun(ctx context.Context, timeout time.Duration, name string, args ...string) (time.Duration, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	d := time.Since(start)
	if ctx.Err() == context.DeadlineExceeded {
		return d, out, fmt.Errorf("%s: no answer within %s (hang)", name, timeout)
	}
	if err != nil {
		return d, out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return d, out, nil
}

// CompareNBD measures nbdcopy write and read throughput and fio 4 KiB
// random-write IOPS at queue depth 32 against each server, on the same
// file, servers taking turns in each round.
func CompareNBD(ctx context.Context, cfg NBDConfig, log io.Writer) (*NBDResult, error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 4
	}
	if cfg.FioRuntime <= 0 {
		cfg.FioRuntime = 10 * time.Second
	}
	if cfg.Settle == 0 {
		cfg.Settle = 3 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	src := filepath.Join(cfg.Dir, "nbd-src.raw")
	if err := GenerateImage(ctx, src, ImageSpec{Size: cfg.Size, Pattern: "r", Seed: 77}); err != nil {
		return nil, err
	}
	target := filepath.Join(cfg.Dir, "nbd-target.raw")
	res := &NBDResult{When: time.Now().UTC(), Size: cfg.Size, Connections: cfg.Connections, Rounds: cfg.Rounds}
	results := make([]NBDServerResult, len(cfg.Servers))
	mib := float64(cfg.Size) / (1 << 20)
	conns := fmt.Sprintf("--connections=%d", cfg.Connections)
	for round := 1; round <= cfg.Rounds; round++ {
		for _, i := range turns(len(cfg.Servers), round) {
			name := cfg.Servers[i]
			r := &results[i]
			r.Server = name
			// A fresh sparse target each time, flushed to disk.
			if err := os.WriteFile(target, nil, 0o644); err != nil {
				return nil, err
			}
			if err := os.Truncate(target, cfg.Size); err != nil {
				return nil, err
			}
			syscall.Sync()
			if err := sleepCtx(ctx, cfg.Settle); err != nil {
				return nil, err
			}
			srv, err := startNBDServer(ctx, cfg, name, target)
			if err != nil {
				r.Errors = append(r.Errors, err.Error())
				continue
			}
			// No --flush: the go-nbd server cannot flush, and every
			// server should be measured on the same work.
			for _, into := range []*[]float64{&r.FirstWriteMiBps, &r.WriteMiBps} {
				d, _, err := timedRun(ctx, 5*time.Minute, "nbdcopy", conns, src, srv.uri)
				if err != nil {
					r.Errors = append(r.Errors, "write: "+err.Error())
					break
				}
				*into = append(*into, mib/d.Seconds())
			}
			d, _, err := timedRun(ctx, 5*time.Minute, "nbdcopy", conns, srv.uri, "null:")
			if err != nil {
				r.Errors = append(r.Errors, "read: "+err.Error())
			} else {
				r.ReadMiBps = append(r.ReadMiBps, mib/d.Seconds())
			}
			if iops, p50, p99, err := clientWrites(ctx, srv, cfg.Size); err != nil {
				r.Errors = append(r.Errors, "4 KiB writes: "+err.Error())
			} else {
				r.QD32IOPS = append(r.QD32IOPS, iops)
				r.QD1P50us = append(r.QD1P50us, p50)
				r.QD1P99us = append(r.QD1P99us, p99)
			}
			if _, err := exec.LookPath("fio"); err == nil {
				iops, err := fioRandWrite(ctx, srv.uri, cfg.Size, cfg.FioRuntime)
				if err != nil {
					r.Errors = append(r.Errors, "fio: "+err.Error())
				} else {
					r.RandWriteIOPS = append(r.RandWriteIOPS, iops)
				}
			}
			srv.stop()
			fmt.Fprintf(log, "round %d %s: write %s, read %s, randwrite %s\n", round, name,
				lastOf(r.WriteMiBps, "%.0f MiB/s"), lastOf(r.ReadMiBps, "%.0f MiB/s"), lastOf(r.RandWriteIOPS, "%.0f IOPS"))
		}
	}
	res.Servers = results
	if cfg.LiveBackup {
		live, err := liveBackupLoad(ctx, cfg, src, target, log)
		if err != nil {
			return nil, err
		}
		res.Live = live
	}
	return res, nil
}

// clientWrites measures 4 KiB writes at random aligned offsets through
// volback's NBD client: IOPS with 32 in flight for two seconds, then the
// latency of 2,000 one at a time (p50, p99 in microseconds).
func clientWrites(ctx context.Context, srv *nbdServer, size int64) (iops, p50, p99 float64, err error) {
	c, err := nbd.Dial(ctx, "unix", srv.sock, srv.export, nbd.ClientOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	const block = 4096
	blocks := size / block
	var ops atomic.Int64
	var first atomic.Value
	deadline := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			buf := make([]byte, block)
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			for time.Now().Before(deadline) {
				if err := c.WriteAt(ctx, buf, r.Int64N(blocks)*block, false); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				ops.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	if e, ok := first.Load().(error); ok {
		return 0, 0, 0, e
	}
	iops = float64(ops.Load()) / time.Since(start).Seconds()
	r := rand.New(rand.NewPCG(77, 78))
	buf := make([]byte, block)
	lat := make([]float64, 2000)
	for i := range lat {
		t := time.Now()
		if err := c.WriteAt(ctx, buf, r.Int64N(blocks)*block, false); err != nil {
			return 0, 0, 0, err
		}
		lat[i] = float64(time.Since(t).Microseconds())
	}
	slices.Sort(lat)
	return iops, lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func lastOf(xs []float64, format string) string {
	if len(xs) == 0 {
		return "failed"
	}
	return fmt.Sprintf(format, xs[len(xs)-1])
}

func fioRandWrite(ctx context.Context, uri string, size int64, runtime time.Duration) (float64, error) {
	_, out, err := timedRun(ctx, runtime+2*time.Minute, "fio", "--name=randwrite", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=32", fmt.Sprintf("--size=%d", size),
		"--time_based", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())), "--output-format=json")
	if err != nil {
		return 0, err
	}
	// fio may print warnings before its JSON.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var rep struct {
		Jobs []struct {
			Write struct {
				IOPS float64 `json:"iops"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Jobs) == 0 {
		return 0, fmt.Errorf("fio output: %v", err)
	}
	return rep.Jobs[0].Write.IOPS, nil
}

// liveBackupLoad measures nbdcopy write throughput into a volback export,
// first alone, then while a full live backup of the same volume runs.
func liveBackupLoad(ctx context.Context, cfg NBDConfig, src, target string, log io.Writer) (*LiveBackupResult, error) {
	if err := os.Truncate(target, cfg.Size); err != nil {
		return nil, err
	}
	srv, err := startNBDServer(ctx, cfg, ServerVolback, target)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	mib := float64(cfg.Size) / (1 << 20)
	conns := fmt.Sprintf("--connections=%d", cfg.Connections)
	// Fill the volume once so the backup has real data to read.
	if _, _, err := timedRun(ctx, 5*time.Minute, "nbdcopy", conns, "--flush", src, srv.uri); err != nil {
		return nil, err
	}
	d, _, err := timedRun(ctx, 5*time.Minute, "nbdcopy", conns, src, srv.uri)
	if err != nil {
		return nil, err
	}
	res := &LiveBackupResult{UnloadedMiBps: mib / d.Seconds()}
	repo := filepath.Join(cfg.Dir, "repo-live")
	os.RemoveAll(repo)
	if _, _, err := timedRun(ctx, time.Minute, cfg.Volback, "--quiet", "repo", "init", "--repo", repo); err != nil {
		return nil, err
	}
	stateDir := filepath.Join(cfg.Dir, "sock-"+ServerVolback)
	backup := exec.CommandContext(ctx, cfg.Volback, "--quiet", "backup", "--live", "--mode", "full",
		"--state-dir", stateDir, "--repo", repo, "bench")
	bstart := time.Now()
	if err := backup.Start(); err != nil {
		return nil, err
	}
	time.Sleep(50 * time.Millisecond) // let the backup freeze first
	wstart := time.Now()
	d, _, werr := timedRun(ctx, 5*time.Minute, "nbdcopy", conns, src, srv.uri)
	wend := time.Now()
	berr := backup.Wait()
	res.BackupSeconds = time.Since(bstart).Seconds()
	if werr != nil {
		return nil, werr
	}
	if berr != nil {
		return nil, fmt.Errorf("live backup: %w", berr)
	}
	res.DuringBackupMiBps = mib / d.Seconds()
	res.Ratio = res.DuringBackupMiBps / res.UnloadedMiBps
	// The figure means something only if the backup ran for the whole copy.
	res.Overlapped = bstart.Add(time.Duration(res.BackupSeconds * float64(time.Second))).After(wend)
	fmt.Fprintf(log, "live backup: writes %.0f MiB/s alone, %.0f MiB/s during a %.2f s backup (%.0f%%, overlapped from %s: %v)\n",
		res.UnloadedMiBps, res.DuringBackupMiBps, res.BackupSeconds, 100*res.Ratio, wstart.Sub(bstart).Round(time.Millisecond), res.Overlapped)

	// Random 4 KiB writes, alone and during another full backup.
	if _, err := exec.LookPath("fio"); err == nil {
		const fioRun = 2 * time.Second
		alone, err := fioRandWrite(ctx, srv.uri, cfg.Size, fioRun)
		if err != nil {
			return nil, err
		}
		backup := exec.CommandContext(ctx, cfg.Volback, "--quiet", "backup", "--live", "--mode", "full",
			"--state-dir", stateDir, "--repo", repo, "bench")
		if err := backup.Start(); err != nil {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
		during, ferr := fioRandWrite(ctx, srv.uri, cfg.Size, fioRun)
		fend := time.Now()
		berr := backup.Wait()
		bend := time.Now()
		if ferr != nil {
			return nil, ferr
		}
		if berr != nil {
			return nil, fmt.Errorf("live backup: %w", berr)
		}
		res.RandWriteIOPSAlone, res.RandWriteIOPSDuring = alone, during
		res.RandWriteRatio = during / alone
		res.RandWriteOverlapped = bend.After(fend)
		fmt.Fprintf(log, "live backup: 4K random writes %.0f IOPS alone, %.0f IOPS during a backup (%.0f%%, overlapped: %v)\n", alone, during, 100*res.RandWriteRatio, res.RandWriteOverlapped)
	}
	return res, nil
}

// WriteTable prints medians and ratios against volback.
func (r *NBDResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "NBD over a Unix socket, %s export, nbdcopy --connections=%d, median of %d rounds\n", humanize.IBytes(uint64(r.Size)), r.Connections, r.Rounds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tFIRST WRITE MiB/s\tWRITE MiB/s\tREAD MiB/s\t4K QD32 IOPS\tFIO 4K QD32 IOPS\tQD1 P50 µs\tQD1 P99 µs\tERRORS")
	var vb *NBDServerResult
	for i := range r.Servers {
		if r.Servers[i].Server == ServerVolback {
			vb = &r.Servers[i]
		}
	}
	for _, s := range r.Servers {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\n", s.Server, medianOr0(s.FirstWriteMiBps), medianOr0(s.WriteMiBps), medianOr0(s.ReadMiBps),
			medianOr0(s.QD32IOPS), medianOr0(s.RandWriteIOPS), medianOr0(s.QD1P50us), medianOr0(s.QD1P99us), len(s.Errors))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range r.Servers {
		if vb == nil || s.Server == ServerVolback {
			continue
		}
		fmt.Fprintf(w, "volback over %s (paired by round; above 1 is volback ahead): first write %.2fx, write %.2fx, read %.2fx, QD32 IOPS %.2fx, fio IOPS %.2fx, QD1 p50 latency %.2fx\n", s.Server,
			pairedRatio(vb.FirstWriteMiBps, s.FirstWriteMiBps), pairedRatio(vb.WriteMiBps, s.WriteMiBps), pairedRatio(vb.ReadMiBps, s.ReadMiBps),
			pairedRatio(vb.QD32IOPS, s.QD32IOPS), pairedRatio(vb.RandWriteIOPS, s.RandWriteIOPS), pairedRatio(s.QD1P50us, vb.QD1P50us))
	}
	for _, s := range r.Servers {
		for _, e := range s.Errors {
			fmt.Fprintf(w, "%s error: %s\n", s.Server, e)
		}
	}
	if r.Live != nil {
		fmt.Fprintf(w, "guest writes during a live backup: %.0f MiB/s vs %.0f MiB/s unloaded = %.0f%% (backup %.2f s, overlapped: %v)\n",
			r.Live.DuringBackupMiBps, r.Live.UnloadedMiBps, 100*r.Live.Ratio, r.Live.BackupSeconds, r.Live.Overlapped)
		if r.Live.RandWriteIOPSAlone > 0 {
			fmt.Fprintf(w, "guest 4K random writes during a live backup: %.0f IOPS vs %.0f IOPS unloaded = %.0f%%\n",
				r.Live.RandWriteIOPSDuring, r.Live.RandWriteIOPSAlone, 100*r.Live.RandWriteRatio)
		}
	}
	return nil
}

func medianOr0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return median(xs)
}
