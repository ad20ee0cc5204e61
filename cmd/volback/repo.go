package main

import (
	"context"
	"fmt"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
)

var repoFlag = &cli.StringFlag{
	Name:     "repo",
	Aliases:  []string{"r"},
	Usage:    "repository directory (an ImageStore backup storage's url)",
	EnvVars:  []string{"VOLBACK_REPO"},
	Required: true,
}

var parallelismFlag = &cli.IntFlag{
	Name:    "parallelism",
	Aliases: []string{"p"},
	Usage:   "parallel workers (parallelismDegree); 0 = one per CPU",
}

func openRepo(ctx context.Context, dir string) (*chunkstore.Repository, error) {
	return local.OpenRepository(ctx, dir)
}

func repoCommand() *cli.Command {
	return &cli.Command{
		Name:  "repo",
		Usage: "manage repositories",
		Subcommands: []*cli.Command{{
			Name:  "init",
			Usage: "create a repository",
			Flags: []cli.Flag{
				repoFlag,
				&cli.StringFlag{Name: "chunk-size", Value: "4MiB", Usage: "chunk size, a power of two from 64KiB to 16MiB"},
				&cli.StringFlag{Name: "compression", Value: "zstd", Usage: "chunk compression: zstd or none"},
			},
			Action: func(c *cli.Context) error {
				cs, err := humanize.ParseBytes(c.String("chunk-size"))
				if err != nil {
					return fmt.Errorf("--chunk-size: %w", err)
				}
				comp, err := chunkstore.ParseCompression(c.String("compression"))
				if err != nil {
					return fmt.Errorf("--compression: %w", err)
				}
				s, err := local.Open(c.String("repo"))
				if err != nil {
					return err
				}
				r, err := chunkstore.Init(c.Context, s, chunkstore.InitOptions{ChunkSize: int(cs), Compression: comp})
				if err != nil {
					return err
				}
				defer r.Close()
				o := outputOf(c)
				cfg := r.Config()
				if o.json {
					return o.printJSON(map[string]any{"id": cfg.ID, "chunkSize": cfg.ChunkSize, "compression": cfg.Compression, "location": r.Location()})
				}
				o.infof("created repository %s at %s (chunk size %s, compression %s)", cfg.ID, r.Location(), humanize.IBytes(uint64(cfg.ChunkSize)), cfg.Compression)
				return nil
			},
		}},
	}
}
