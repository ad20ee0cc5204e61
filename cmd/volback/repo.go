package main

import (
	"context"
	"fmt"
	"os"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
)

var repoFlag = &cli.StringFlag{
	Name:     "repo",
	Aliases:  []string{"r"},
	Usage:    "repository: a directory (an ImageStore backup storage's url), nfs://HOST[:PORT]/PATH[?OPTIONS] or s3://BUCKET/PREFIX[?endpoint=URL&region=R&path-style] (credentials from the AWS environment or a profile= option)",
	EnvVars:  []string{"VOLBACK_REPO"},
	Required: true,
}

var parallelismFlag = &cli.IntFlag{
	Name:    "parallelism",
	Aliases: []string{"p"},
	Usage:   "parallel workers (parallelismDegree); 0 = one per CPU",
}

func openRepo(ctx context.Context, repo string) (*chunkstore.Repository, error) {
	st, err := openStore(ctx, repo)
	if err != nil {
		return nil, err
	}
	r, err := chunkstore.Open(ctx, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	return r, nil
}

// openStore opens the store a --repo value names.
func openStore(ctx context.Context, repo string) (chunkstore.Store, error) {
	spec, err := target.ParseURL(repo)
	if err != nil {
		return nil, err
	}
	env := target.Env{S3AccessKeyID: os.Getenv("VOLBACK_S3_ACCESS_KEY_ID"), S3SecretAccessKey: os.Getenv("VOLBACK_S3_SECRET_ACCESS_KEY")}
	return target.Open(ctx, spec, env)
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
				s, err := openStore(c.Context, c.String("repo"))
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
