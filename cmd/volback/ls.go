package main

import (
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
)

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list the backups in a repository",
		Flags: []cli.Flag{repoFlag},
		Action: func(c *cli.Context) error {
			o := outputOf(c)
			r, err := openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer r.Close()
			// Summaries: the backup index and the manifests it lacks; the
			// index is rewritten (if the credentials allow) once many
			// manifests were read beyond it.
			ms, bad, _, err := r.Summaries(c.Context, true)
			if err != nil {
				return err
			}
			// Each unreadable manifest is named; the others are listed.
			for _, b := range bad {
				fmt.Fprintf(os.Stderr, "unreadable manifest of backup %s: %s\n", b.ID, b.Error)
			}
			if err := listBackups(o, ms); err != nil {
				return err
			}
			if len(bad) > 0 {
				return cli.Exit(chunkstore.BadManifestsError(bad).Error(), exitVerifyFailed)
			}
			return nil
		},
	}
}

// listBackups prints manifests, oldest first.
func listBackups(o output, ms []*chunkstore.Manifest) error {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Finished.Before(ms[j].Finished) })
	if o.json {
		out := make([]backupJSON, 0, len(ms))
		for _, m := range ms {
			out = append(out, backupSummary(m, time.Duration(m.Stats.DurationNanos)))
		}
		return o.printJSON(out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVOLUME\tSIZE\tMODE\tFINISHED\tNEW\tSTORED\tNAME")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", m.ID, m.VolumeID, humanize.IBytes(uint64(m.Size)), m.Mode,
			m.Finished.Local().Format(time.DateTime), m.Stats.ChunksNew, m.Stats.ChunksTotal,
			humanize.IBytes(uint64(m.Stats.BytesStored)), m.Meta["name"])
	}
	return tw.Flush()
}
