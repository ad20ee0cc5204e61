package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control"
	"github.com/volback/volback/dataplane"
)

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "back up a volume file or block device; prints the backup id",
		ArgsUsage: "FILE",
		Flags: []cli.Flag{
			repoFlag,
			parallelismFlag,
			&cli.StringFlag{Name: "parent", Usage: "the backup this one follows (recorded as its parent)"},
			&cli.StringFlag{Name: "volume-id", Usage: "volume id recorded in the manifest (default: the file's path)"},
			&cli.StringFlag{Name: "name", Usage: "backup name recorded in the manifest"},
			&cli.StringFlag{Name: "id", Usage: "the backup's id (32 hex digits); default a random one"},
			&cli.BoolFlag{Name: "live", Usage: "FILE is the UUID of a volume exported by a running `volback serve`: back it up live, with its changed-block map"},
			&cli.StringFlag{Name: "mode", Value: "auto", Usage: "with --live: full, incremental or auto"},
			&cli.StringFlag{Name: "read-bandwidth", Usage: "with --live: limit how fast the volume is read, e.g. 50MiB (per second)"},
			stateDirFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("backup takes exactly one FILE")
			}
			if c.Bool("live") {
				return liveBackup(c)
			}
			path := c.Args().First()
			o := outputOf(c)
			r, err := openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer r.Close()
			f, size, err := dataplane.OpenVolume(path)
			if err != nil {
				return err
			}
			defer f.Close()
			opts := dataplane.BackupOptions{
				ID:          c.String("id"),
				VolumeID:    c.String("volume-id"),
				Parallelism: c.Int("parallelism"),
				Progress:    &dataplane.Progress{},
			}
			if opts.VolumeID == "" {
				opts.VolumeID = path
			}
			if n := c.String("name"); n != "" {
				opts.Meta = map[string]string{"name": n}
			}
			if p := c.String("parent"); p != "" {
				if opts.Parent, err = r.LoadManifest(c.Context, p); err != nil {
					return fmt.Errorf("--parent: %w", err)
				}
			}
			start := time.Now()
			stop := o.watch(opts.Progress, "backup")
			m, err := dataplane.Backup(c.Context, r, f, size, opts)
			stop()
			if err != nil {
				return err
			}
			elapsed := time.Since(start)
			if o.json {
				return o.printJSON(backupSummary(m, elapsed))
			}
			fmt.Println(m.ID)
			o.infof("backed up %s (%s) in %s, %s: %d chunks, %d new (%s stored), %d already present, %d zero",
				path, humanize.IBytes(uint64(size)), elapsed.Round(time.Millisecond), rate(m.Stats.BytesRead, elapsed),
				m.Stats.ChunksTotal, m.Stats.ChunksNew, humanize.IBytes(uint64(m.Stats.BytesStored)), m.Stats.ChunksDedup, m.Stats.ChunksZero)
			return nil
		},
	}
}

// liveBackup asks the running daemon (volback serve or volback daemon),
// through its admin socket, to back up one of its volumes. The backup runs
// under the daemon's lifetime: if this client is interrupted, it cancels
// the backup explicitly and says so.
func liveBackup(c *cli.Context) error {
	o := outputOf(c)
	repo, err := repoOf(c)
	if err != nil {
		return err
	}
	spec, err := target.ParseURL(repo)
	if err != nil {
		return err
	}
	if c.String("parent") != "" {
		return errors.New("--parent does not apply to --live: the volume's changed-block chain picks the parent")
	}
	id := c.String("id")
	if id == "" {
		id = chunkstore.NewID() // known here, so an interrupted client can cancel it
	}
	vol := c.Args().First()
	req := control.LocalBackupRequest{Repo: spec.String(), Mode: c.String("mode"), Parallelism: c.Int("parallelism"), ID: id}
	if bw := c.String("read-bandwidth"); bw != "" {
		n, err := humanize.ParseBytes(bw)
		if err != nil || n < 1024 {
			return fmt.Errorf("--read-bandwidth %q: want bytes per second, at least 1KiB", bw)
		}
		req.ReadBytesPerSec = int64(n)
	}
	if n := c.String("name"); n != "" {
		req.Meta = map[string]string{"name": n}
	}
	sock := filepath.Join(c.String("state-dir"), "control.sock")
	var reply control.LocalBackupReply
	err = control.CallLocal(c.Context, sock, "POST", "/v1/volumes/"+url.PathEscape(vol)+"/backups", req, &reply)
	if err != nil && c.Context.Err() != nil {
		// Interrupted: cancel the backup, which would otherwise go on.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var res map[string]any
		if cerr := control.CallLocal(ctx, sock, "DELETE", "/v1/backups/"+id, nil, &res); cerr != nil {
			return fmt.Errorf("interrupted; cancelling live backup %s of volume %s: %w", id, vol, cerr)
		}
		return fmt.Errorf("interrupted: cancelled live backup %s of volume %s", id, vol)
	}
	if err != nil {
		return err
	}
	if o.json {
		return o.printJSON(reply)
	}
	fmt.Println(reply.ID)
	o.infof("live %s backup of volume %s in %.3fs: read %s in %d chunks, %d new (%s stored)%s",
		reply.Mode, reply.VolumeID, reply.Seconds, humanize.IBytes(uint64(reply.Stats.BytesRead)), reply.Stats.ChunksRead,
		reply.Stats.ChunksNew, humanize.IBytes(uint64(reply.Stats.BytesStored)), reasonSuffix(reply.Meta["fullReason"]))
	return nil
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return "; full read because " + r
}

type backupJSON struct {
	ID       string           `json:"id"`
	VolumeID string           `json:"volumeId"`
	Size     int64            `json:"size"`
	Parent   string           `json:"parent,omitempty"`
	Mode     string           `json:"mode"`
	Seconds  float64          `json:"seconds"`
	Stats    chunkstore.Stats `json:"stats"`
}

func backupSummary(m *chunkstore.Manifest, d time.Duration) backupJSON {
	return backupJSON{ID: m.ID, VolumeID: m.VolumeID, Size: m.Size, Parent: m.Parent, Mode: string(m.Mode), Seconds: d.Seconds(), Stats: m.Stats}
}
