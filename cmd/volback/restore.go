package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
)

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "write a backup to a file or block device",
		ArgsUsage: "BACKUP TARGET",
		Flags: []cli.Flag{
			repoFlag,
			parallelismFlag,
			&cli.BoolFlag{Name: "force", Usage: "replace an existing file, or write to a block device"},
			&cli.BoolFlag{Name: "no-verify", Usage: "do not re-read the target after writing it"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return errors.New("restore takes BACKUP and TARGET")
			}
			id, dst := c.Args().Get(0), c.Args().Get(1)
			o := outputOf(c)
			r, err := openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer r.Close()
			m, err := r.LoadManifest(c.Context, id)
			if err != nil {
				return err
			}
			p := &dataplane.Progress{}
			start := time.Now()
			stop := o.watch(p, "restore")
			st, err := dataplane.Restore(c.Context, r, m, dst, dataplane.RestoreOptions{
				Parallelism: c.Int("parallelism"),
				Force:       c.Bool("force"),
				SkipVerify:  c.Bool("no-verify"),
				Progress:    p,
			})
			stop()
			if err != nil {
				return err
			}
			elapsed := time.Since(start)
			if o.json {
				return o.printJSON(map[string]any{"id": m.ID, "target": dst, "size": m.Size, "seconds": elapsed.Seconds(), "stats": st})
			}
			o.infof("restored backup %s to %s (%s) in %s, %s; verified: %v",
				m.ID, dst, humanize.IBytes(uint64(m.Size)), elapsed.Round(time.Millisecond), rate(m.Size, elapsed), st.Verified)
			if o.quiet {
				return nil
			}
			fmt.Println(dst)
			return nil
		},
	}
}
