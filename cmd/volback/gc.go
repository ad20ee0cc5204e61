package main

import (
	"fmt"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
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
			r, err := openRepo(c.Context, c.String("repo"))
			if err != nil {
				return err
			}
			defer r.Close()
			rep, err := r.GC(c.Context, chunkstore.GCOptions{DryRun: c.Bool("dry-run")})
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
