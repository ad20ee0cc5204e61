package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure volback against the tools users would pick instead",
		Subcommands: []*cli.Command{{
			Name:  "nbd",
			Usage: "nbdcopy and fio against volback's NBD server, nbdkit file and the go-nbd server, side by side",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory"},
				&cli.StringFlag{Name: "size", Value: "1GiB", Usage: "export size"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "rounds; servers take turns in each, medians are reported"},
				&cli.StringFlag{Name: "servers", Value: "volback,nbdkit,go-nbd", Usage: "comma-separated servers"},
				&cli.IntFlag{Name: "connections", Value: 4, Usage: "nbdcopy connections"},
				&cli.DurationFlag{Name: "fio-runtime", Value: 10 * time.Second, Usage: "fio random-write run time"},
				&cli.BoolFlag{Name: "live-backup", Value: true, Usage: "also measure volback's write throughput during a live backup"},
				&cli.DurationFlag{Name: "settle", Value: 3 * time.Second, Usage: "wait after freeing the previous target's pages before each first write, so every server starts with the host's memory in the same state (0: none)"},
				&cli.StringFlag{Name: "json-out", Usage: "also write the result as JSON to this file"},
			},
			Action: benchAction(func(c *cli.Context, size int64, self string) (report, error) {
				return bench.CompareNBD(c.Context, bench.NBDConfig{
					Dir: c.String("dir"), Size: size, Rounds: c.Int("rounds"),
					Servers: strings.Split(c.String("servers"), ","), Volback: self,
					Connections: c.Int("connections"), FioRuntime: c.Duration("fio-runtime"), LiveBackup: c.Bool("live-backup"),
					Settle: settleFlag(c.Duration("settle")),
				}, os.Stderr)
			}),
		}, {
			Name:   "gonbd-server",
			Usage:  "serve a file with the go-nbd v0.3.2 server (the bench's baseline)",
			Hidden: true,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "file", Required: true},
				&cli.StringFlag{Name: "socket", Required: true},
			},
			Action: func(c *cli.Context) error {
				return bench.ServeGoNBD(c.Context, c.String("file"), c.String("socket"))
			},
		}, {
			Name:      "image",
			Usage:     "generate a test image: 16 MiB stripes of random, text and zero data",
			ArgsUsage: "PATH",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "size", Value: "1GiB", Usage: "image size in bytes (suffixes KiB, MiB, GiB...)"},
				&cli.StringFlag{Name: "pattern", Value: "rrtz", Usage: "stripe pattern: r random, t text, z zeros"},
				&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "random seed; the same seed gives the same image"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("bench image takes one PATH")
				}
				size, err := humanize.ParseBytes(c.String("size"))
				if err != nil {
					return fmt.Errorf("--size: %w", err)
				}
				return bench.GenerateImage(c.Context, c.Args().First(), bench.ImageSpec{
					Size: int64(size), Pattern: c.String("pattern"), Seed: c.Uint64("seed"),
				})
			},
		}, {
			Name:  "backup",
			Usage: "full backup of one image with volback, restic and borg, side by side",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory (needs room for the image and three repositories)"},
				&cli.StringFlag{Name: "image", Usage: "back up this image instead of generating one"},
				&cli.StringFlag{Name: "size", Value: "4GiB", Usage: "size of the generated image"},
				&cli.StringFlag{Name: "chunk-size", Value: "4MiB", Usage: "volback chunk size"},
				parallelismFlag,
				&cli.StringFlag{Name: "tools", Value: "volback,volback-encrypted,restic,borg", Usage: "comma-separated tools to run (volback, volback-encrypted, volback-zstd, volback-s2, volback-lz4, volback-none, restic, borg, qemu-img)"},
				&cli.BoolFlag{Name: "drop-caches", Usage: "drop the page cache before each run (root)"},
				&cli.BoolFlag{Name: "floor", Value: true, Usage: "after each volback run, time writing what it stored (O_DIRECT, fsync): its disk floor, paired by round"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "runs per tool, taking turns; the median is reported"},
				&cli.StringFlag{Name: "json-out", Usage: "also write the result as JSON to this file"},
			},
			Action: benchAction(func(c *cli.Context, size int64, self string) (report, error) {
				cs, err := humanize.ParseBytes(c.String("chunk-size"))
				if err != nil {
					return nil, fmt.Errorf("--chunk-size: %w", err)
				}
				return bench.CompareBackup(c.Context, bench.BackupCompareConfig{
					Dir: c.String("dir"), Image: c.String("image"), Size: size, ChunkSize: int(cs),
					Parallelism: c.Int("parallelism"), Tools: strings.Split(c.String("tools"), ","),
					Volback: self, DropCaches: c.Bool("drop-caches"), Rounds: c.Int("rounds"), Floor: c.Bool("floor"),
				}, os.Stderr)
			}),
		}, {
			Name:  "qemu",
			Usage: "full backup of one image from a qemu-storage-daemon source and from volback's own export, side by side; then an incremental through QEMU's bitmap",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory"},
				&cli.StringFlag{Name: "size", Value: "2GiB", Usage: "size of the generated image"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "rounds; the two sources take turns in each"},
				&cli.Float64Flag{Name: "changed", Value: 1, Usage: "percent of the disk changed before the incremental"},
				parallelismFlag,
				&cli.StringFlag{Name: "json-out", Usage: "also write the result as JSON to this file"},
			},
			Action: benchAction(func(c *cli.Context, size int64, _ string) (report, error) {
				return bench.CompareQEMU(c.Context, bench.QEMUCompareConfig{
					Dir: c.String("dir"), Size: size, Rounds: c.Int("rounds"), Parallelism: c.Int("parallelism"), ChangedPercent: c.Float64("changed"),
				}, os.Stderr)
			}),
		}, {
			Name:  "all",
			Usage: "the benchmark report: the machine's limits, full backup and restore beside restic and borg, backup by parallelismDegree; Markdown, JSON and SVG charts in --out",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory"},
				&cli.StringFlag{Name: "out", Value: "bench-report", Usage: "where report.md, report.json and the charts go"},
				&cli.BoolFlag{Name: "quick", Usage: "a 64 MiB image and one round: checks the harness, measures nothing"},
				&cli.StringFlag{Name: "size", Value: "2GiB", Usage: "size of the generated image (64MiB with --quick unless given)"},
				&cli.IntFlag{Name: "rounds", Usage: "rounds of each measurement (default 3, 1 with --quick)"},
				&cli.BoolFlag{Name: "keep", Usage: "keep the run's working files (a subdirectory of --dir) instead of removing them at the end"},
			},
			Action: benchAction(func(c *cli.Context, size int64, self string) (report, error) {
				if c.Bool("quick") && !c.IsSet("size") {
					size = 0
				}
				return bench.RunAll(c.Context, bench.AllConfig{
					Dir: c.String("dir"), Out: c.String("out"), Quick: c.Bool("quick"), Size: size,
					Rounds: c.Int("rounds"), Volback: self, Keep: c.Bool("keep"),
				}, os.Stderr)
			}),
		}, {
			Name:  "s3",
			Usage: "full backup and restore of one image to the local disk, a versitygw and a three-volume-server SeaweedFS cluster, side by side",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory"},
				&cli.StringFlag{Name: "size", Value: "2GiB", Usage: "size of the generated image"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "rounds; the targets take turns in each"},
				parallelismFlag,
				&cli.StringFlag{Name: "json-out", Usage: "also write the result as JSON to this file"},
			},
			Action: benchAction(func(c *cli.Context, size int64, _ string) (report, error) {
				return bench.CompareS3(c.Context, bench.S3CompareConfig{
					Dir: c.String("dir"), Size: size, Rounds: c.Int("rounds"), Parallelism: c.Int("parallelism"),
				}, os.Stderr)
			}),
		}, {
			Name:  "mount",
			Usage: "sequential read of a backup through volback mount and restic mount, side by side",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: "bench-out", Usage: "working directory"},
				&cli.StringFlag{Name: "image", Usage: "use this image instead of generating one"},
				&cli.StringFlag{Name: "size", Value: "4GiB", Usage: "size of the generated image"},
				&cli.StringFlag{Name: "tools", Value: "volback,restic", Usage: "comma-separated tools to run"},
				&cli.IntFlag{Name: "rounds", Value: 2, Usage: "cached reads after the fresh one; the best is reported"},
				&cli.StringFlag{Name: "json-out", Usage: "also write the result as JSON to this file"},
			},
			Action: benchAction(func(c *cli.Context, size int64, self string) (report, error) {
				return bench.CompareMount(c.Context, bench.MountCompareConfig{
					Dir: c.String("dir"), Image: c.String("image"), Size: size,
					Tools: strings.Split(c.String("tools"), ","), Volback: self, Rounds: c.Int("rounds"),
				}, os.Stderr)
			}),
		}},
	}
}

// report is a comparison's result: a table, and JSON.
type report interface{ WriteTable(io.Writer) error }

// benchAction binds a comparison to the command line: it reads --size,
// finds this binary (the comparison runs it), runs the comparison and
// prints its report as a table or JSON, also into --json-out.
func benchAction(run func(c *cli.Context, size int64, self string) (report, error)) cli.ActionFunc {
	return func(c *cli.Context) error {
		size, err := humanize.ParseBytes(c.String("size"))
		if err != nil {
			return fmt.Errorf("--size: %w", err)
		}
		self, err := os.Executable()
		if err != nil {
			return err
		}
		res, err := run(c, int64(size), self)
		if err != nil {
			return err
		}
		if err := writeJSONFile(c.String("json-out"), res); err != nil {
			return err
		}
		if outputOf(c).json {
			return outputOf(c).printJSON(res)
		}
		return res.WriteTable(os.Stdout)
	}
}

// writeJSONFile writes v as indented JSON to path; an empty path writes
// nothing.
func writeJSONFile(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// settleFlag maps --settle 0 (no wait) onto the config's "none".
func settleFlag(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
