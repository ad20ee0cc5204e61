package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/target"
)

// repoUsage describes the --repo forms.
const repoUsage = "repository: a directory (an ImageStore backup storage's url), nfs://HOST[:PORT]/PATH[?OPTIONS] or s3://BUCKET/PREFIX[?endpoint=URL&region=R&path-style] (credentials from the AWS environment or a profile= option)"

// repoFlag is --repo on the commands that take one; it is also accepted
// before the command (see globalFlags), and repoOf reads either.
var repoFlag = &cli.StringFlag{
	Name:    "repo",
	Aliases: []string{"r"},
	Usage:   repoUsage,
	EnvVars: []string{"VOLBACK_REPO"},
}

var parallelismFlag = &cli.IntFlag{
	Name:    "parallelism",
	Aliases: []string{"p"},
	Usage:   "parallel workers (parallelismDegree); 0 = one per CPU",
}

// repoOf is the --repo given after or before the command (or in
// VOLBACK_REPO); it is required.
func repoOf(c *cli.Context) (string, error) {
	if r := stringFlag(c, "repo"); r != "" {
		return r, nil
	}
	return "", errors.New("--repo is required (or VOLBACK_REPO)")
}

// openRepo opens the repository --repo names, through the one opener.
func openRepo(c *cli.Context, create target.Create, init chunkstore.InitOptions) (*chunkstore.Repository, error) {
	url, err := repoOf(c)
	if err != nil {
		return nil, err
	}
	return openRepoURL(c.Context, url, create, init)
}

func openRepoURL(ctx context.Context, url string, create target.Create, init chunkstore.InitOptions) (*chunkstore.Repository, error) {
	spec, err := target.ParseURL(url)
	if err != nil {
		return nil, err
	}
	env := target.Env{S3AccessKeyID: os.Getenv("VOLBACK_S3_ACCESS_KEY_ID"), S3SecretAccessKey: os.Getenv("VOLBACK_S3_SECRET_ACCESS_KEY")}
	r, err := target.OpenRepository(ctx, spec, env, target.RepoOptions{Create: create, Init: init})
	if err == nil && spec.Kind == target.Local {
		if problem := local.ModeProblem(spec.URL); problem != "" {
			fmt.Fprintln(os.Stderr, "warning:", problem)
		}
	}
	return r, err
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
				r, err := openRepo(c, target.CreateNew, chunkstore.InitOptions{ChunkSize: int(cs), Compression: comp})
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
