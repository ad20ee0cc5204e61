package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volback/volback/bench"
)

// TestBenchAllQuick: `volback bench all --quick` (what CI runs so the
// harness never rots) writes the Markdown report, its JSON and the SVG
// charts, every section measured (the NBD export beside go-nbd and
// nbdkit included).
func TestBenchAllQuick(t *testing.T) {
	// Relative directories, as `scripts/bench` passes them: every tool
	// must still find its repository, whatever directory it runs in.
	cwd := t.TempDir()
	r := runIn(t, cwd, "--quiet", "bench", "all", "--quick", "--dir", "work", "--out", "report")
	if r.code != 0 || !strings.Contains(r.stdout, "## Full backup") {
		t.Fatalf("bench all: exit %d, printed:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	// Its working files (some 13 GiB at the default size) go when it
	// ends.
	if left, err := os.ReadDir(filepath.Join(cwd, "work")); err != nil || len(left) != 0 {
		t.Fatalf("bench all left %d entries in its working directory (%v)", len(left), err)
	}
	out := filepath.Join(cwd, "report")
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.AllReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	l := rep.Limits
	if !rep.Quick || rep.Size != 64<<20 || l.CachedReadMiBps <= 0 || l.DiskWriteMiBps <= 0 || l.DiskMixedMiBps <= 0 || l.XXHashMiBps <= 0 || l.ZstdMiBps <= 0 ||
		l.KeyMiBps <= 0 || l.S2MiBps <= 0 || l.S2AllMiBps <= 0 || rep.CPUFloorSeconds() <= 0 ||
		l.DiskReadBackMiBps <= 0 {
		t.Fatalf("limits: %+v (quick %v, size %d)", l, rep.Quick, rep.Size)
	}
	if len(rep.Backup.Runs) == 0 || rep.Backup.Runs[0].Tool != "volback" || rep.Backup.Runs[0].Error != "" || rep.Backup.Runs[0].Seconds <= 0 || rep.Backup.Runs[0].CPUSeconds <= 0 || rep.Backup.Runs[0].CPUBusy <= 0 || rep.FloorRatio <= 0 || len(rep.Backup.Runs[0].FloorRounds) != 1 {
		t.Fatalf("backup: %+v, floor ratio %v", rep.Backup.Runs, rep.FloorRatio)
	}
	if d := rep.RestoreDisk; d == nil || d.Bytes != rep.Size/4*3 || d.Streams < 1 || d.WriteOnly.Median <= 0 || d.ReadBack.Median <= 0 || d.Cost <= 0 || len(d.ReadBack.Rounds) != rep.Rounds {
		t.Fatalf("restore's disk pattern: %+v", rep.RestoreDisk)
	}
	if len(rep.Restore) < 2 || rep.Restore[0].Error != "" || rep.Restore[1].Error != "" || rep.Restore[0].Seconds.Median <= 0 || rep.VerifyCost <= 0 {
		t.Fatalf("restore: %+v, verify cost %v", rep.Restore, rep.VerifyCost)
	}
	for _, x := range rep.Restore {
		// A baseline is measured when its tool is installed (restic and
		// borg are not in CI's set-up; they are on a benchmark machine).
		if _, err := exec.LookPath(x.Tool); err == nil && x.Error != "" {
			t.Errorf("restore with %s (%s): %s", x.Tool, x.Mode, x.Error)
		}
	}
	cbt, runs := 0, 0
	for _, x := range rep.Incremental {
		if x.Error != "" {
			t.Errorf("incremental %s at %.0f%%: %s", x.Tool, x.ChangedPercent, x.Error)
		}
		if x.Tool == bench.IncVolbackCBT && x.Seconds > 0 && x.BytesRead > 0 && x.BytesRead <= rep.Size && x.OfFull > 0 {
			cbt++
		}
		if x.Tool == bench.IncVolbackCBTRuns && x.Seconds > 0 && x.BytesRead > 0 && x.OfFull > 0 && x.BytesStored > 0 && x.StoredOfFull > 0 && x.StoredOfFull < 1 {
			runs++
		}
	}
	if cbt != 2 || runs != 2 {
		t.Fatalf("incremental: %+v", rep.Incremental)
	}
	if len(rep.Parallel) != 2 || rep.Parallel[1].MiBps <= 0 {
		t.Fatalf("parallelism: %+v", rep.Parallel)
	}
	requireTools(t, "nbdcopy", "fusermount3")
	if rep.Mount == nil || len(rep.Mount.Runs) == 0 || rep.Mount.Runs[0].Tool != "volback" || rep.Mount.Runs[0].Error != "" || rep.Mount.Runs[0].ColdMBps <= 0 {
		t.Fatalf("mount: %+v", rep.Mount)
	}
	if rep.NBD == nil || len(rep.NBD.Servers) < 2 || rep.NBD.Servers[0].Server != "volback" || len(rep.NBD.Servers[0].WriteMiBps) != 1 || len(rep.NBD.Servers[0].ReadMiBps) != 1 ||
		len(rep.NBD.Servers[0].QD32IOPS) != 1 || rep.NBD.Servers[0].QD1P50us[0] <= 0 || rep.NBD.Servers[0].QD1P99us[0] < rep.NBD.Servers[0].QD1P50us[0] {
		t.Fatalf("nbd: %+v", rep.NBD)
	}
	if l := rep.NBD.Live; l == nil || l.UnloadedMiBps <= 0 || l.DuringBackupMiBps <= 0 {
		t.Fatalf("guest writes during a live backup: %+v", rep.NBD.Live)
	}
	requireTools(t, "qemu-img")
	var qi *bench.ToolRun
	for i := range rep.Backup.Runs {
		if rep.Backup.Runs[i].Tool == bench.ToolQemuImg {
			qi = &rep.Backup.Runs[i]
		}
	}
	if qi == nil || qi.Error != "" || qi.Seconds <= 0 {
		t.Fatalf("qemu-img convert baseline: %+v", qi)
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"The CPU floor", "S2 (text), all", "stored, of the full's", "the disk charges the check", "All of volback's CPU work", "Without compression (volback-none)", "volback over go-nbd, the median of the rounds' ratios"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	for _, c := range []string{"backup.svg", "restore.svg", "incremental.svg", "parallelism.svg"} {
		svg, err := os.ReadFile(filepath.Join(out, c))
		if err != nil || !strings.Contains(string(svg), "<svg") {
			t.Fatalf("chart %s: %v", c, err)
		}
		if !strings.Contains(string(md), "("+c+")") {
			t.Errorf("report.md does not show %s", c)
		}
	}
}
