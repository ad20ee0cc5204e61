package main

import (
	"fmt"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "delete chunks no backup names any more (safe beside backups on other hosts: it withdraws while any runs)",
		Flags: []cli.Flag{
			repoFlag,
			&cli.BoolFlag{Name: "dry-run", Usage: "count what would be deleted, delete nothing"},
		},
		Action: func(c *cli.Context) error {
			o := outputOf(c)
			r, err := openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer r.Close()
			// The number of chunks is known only at the end: a counter.
			var bar *progressbar.ProgressBar
			if !o.quiet && !o.json && isatty.IsTerminal(os.Stderr.Fd()) {
				bar = progressbar.NewOptions(-1, progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetDescription("gc: chunks examined"), progressbar.OptionShowCount(),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSpinnerType(14))
			}
			rep, err := r.GC(c.Context, chunkstore.GCOptions{DryRun: c.Bool("dry-run"), Progress: func(n int) {
				if bar != nil {
					_ = bar.Set(n)
				}
			}})
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(os.Stderr)
			}
			if err != nil {
				return err
			}
			if o.json {
				return o.printJSON(rep)
			}
			verb := "deleted"
			if rep.DryRun {
				verb = "would delete"
			}
			o.infof("%d backups name %d of %d chunks; %s %d chunks (%s) in %s",
				rep.Manifests, rep.ChunksInUse, rep.ChunksTotal, verb, rep.ChunksDeleted,
				humanize.IBytes(uint64(rep.BytesDeleted)), rep.Duration.Round(time.Millisecond))
			if rep.MissingChunks > 0 {
				return fmt.Errorf("%d chunks named by backups are missing: run verify", rep.MissingChunks)
			}
			return nil
		},
	}
}
