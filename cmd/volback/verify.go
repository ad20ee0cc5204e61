package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "re-read every chunk of the given backups (default all) and check it against its key",
		ArgsUsage: "[BACKUP...]",
		Flags:     []cli.Flag{repoFlag, parallelismFlag},
		Action: func(c *cli.Context) error {
			o := outputOf(c)
			r, err := openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer r.Close()
			p := &dataplane.Progress{}
			start := time.Now()
			stop := o.watch(p, "verify")
			rep, err := r.Verify(c.Context, c.Args().Slice(), chunkstore.VerifyOptions{
				Parallelism: c.Int("parallelism"),
				OnTotal:     p.SetTotal,
				OnProgress:  p.Add,
			})
			stop()
			if err != nil {
				return err
			}
			elapsed := time.Since(start)
			if o.json {
				if err := o.printJSON(rep); err != nil {
					return err
				}
			} else {
				for _, b := range rep.BadManifests {
					fmt.Fprintf(os.Stderr, "unreadable manifest of backup %s: %s\n", b.ID, b.Error)
				}
				for _, b := range rep.Bad {
					fmt.Fprintf(os.Stderr, "bad chunk %s (used by backups %s): %s\n", b.Key, strings.Join(b.Backups, ", "), b.Error)
				}
				o.infof("checked %d chunks (%s) of %d backups in %s, %s: %d bad",
					rep.Chunks, humanize.IBytes(uint64(rep.Bytes)), rep.Backups, elapsed.Round(time.Millisecond), rate(rep.Bytes, elapsed), len(rep.Bad))
			}
			if len(rep.BadManifests) > 0 {
				msg := fmt.Sprintf("verify failed: %v", chunkstore.BadManifestsError(rep.BadManifests))
				if len(rep.Bad) > 0 {
					msg += fmt.Sprintf("; %d bad chunks in backups %s", len(rep.Bad), strings.Join(rep.BadBackups, ", "))
				}
				return cli.Exit(msg, exitVerifyFailed)
			}
			if !rep.OK() {
				return cli.Exit(fmt.Sprintf("verify failed: %d bad chunks in backups %s", len(rep.Bad), strings.Join(rep.BadBackups, ", ")), exitVerifyFailed)
			}
			return nil
		},
	}
}
