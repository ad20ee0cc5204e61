package main

import (
	"errors"
	"fmt"
	"os"
	"time"

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
	return openRepoURL(c, url, create, init)
}

func openRepoURL(c *cli.Context, url string, create target.Create, init chunkstore.InitOptions) (*chunkstore.Repository, error) {
	ctx := c.Context
	spec, err := target.ParseURL(url)
	if err != nil {
		return nil, err
	}
	env := target.Env{S3AccessKeyID: os.Getenv("VOLBACK_S3_ACCESS_KEY_ID"), S3SecretAccessKey: os.Getenv("VOLBACK_S3_SECRET_ACCESS_KEY")}
	r, err := target.OpenRepository(ctx, spec, env, target.RepoOptions{Create: create, Init: init, Passphrase: passphraseOf(c, "passphrase of "+spec.String())})
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
				&cli.StringFlag{Name: "compression", Value: "auto-s2", Usage: "chunk compression: auto-s2 (zstd while the host's CPUs have room, else s2, chunk by chunk), auto (zstd or lz4: with --format 1, a repository builds before s2 read), zstd, s2 (about three times as fast, stores text a quarter larger), lz4 (twice as fast, stores text half as large again) or none"},
				&cli.IntFlag{Name: "format", Value: chunkstore.FormatVersion, Usage: "format of a plain repository: 3 (chunk keys XXH3-128, one fast pass) or 1 (two xxhash64 passes, which builds older than format 3 also read; pair with --compression auto)"},
				&cli.BoolFlag{Name: "encrypt", Usage: "encrypt chunks and manifests (AES-256-GCM) under a key wrapped by the passphrase (--password-file, VOLBACK_PASSWORD or a prompt)"},
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
				init := chunkstore.InitOptions{ChunkSize: int(cs), Compression: comp, Format: c.Int("format")}
				if f := init.Format; f != chunkstore.FormatXXH64 && f != chunkstore.FormatXXH3 {
					return fmt.Errorf("--format %d: want %d or %d", f, chunkstore.FormatXXH3, chunkstore.FormatXXH64)
				}
				if c.Bool("encrypt") {
					if c.IsSet("format") {
						return fmt.Errorf("--format and --encrypt: an encrypted repository is always format %d", chunkstore.FormatEncrypted)
					}
					init.Format = 0
					if init.Passphrase, err = readPassphrase(stringFlag(c, "password-file"), "VOLBACK_PASSWORD", "passphrase of the new repository", true); err != nil {
						return err
					}
				}
				r, err := openRepo(c, target.CreateNew, init)
				if err != nil {
					return err
				}
				defer r.Close()
				o := outputOf(c)
				cfg := r.Config()
				if o.json {
					return o.printJSON(map[string]any{"id": cfg.ID, "format": cfg.Version, "chunkSize": cfg.ChunkSize, "compression": cfg.Compression, "encrypted": r.Encrypted(), "location": r.Location()})
				}
				enc := ""
				if r.Encrypted() {
					enc = ", encrypted: keep the passphrase, no one can read the backups without it"
				}
				o.infof("created repository %s at %s (format %d, chunk size %s, compression %s%s)", cfg.ID, r.Location(), cfg.Version, humanize.IBytes(uint64(cfg.ChunkSize)), cfg.Compression, enc)
				return nil
			},
		}, keyCommand()},
	}
}

// keyCommand manages the key slots of an encrypted repository.
func keyCommand() *cli.Command {
	open := func(c *cli.Context) (*chunkstore.Repository, error) {
		return openRepo(c, target.OpenExisting, chunkstore.InitOptions{})
	}
	return &cli.Command{
		Name:  "key",
		Usage: "list, add and remove the passphrases of an encrypted repository",
		Subcommands: []*cli.Command{{
			Name:  "list",
			Usage: "list the key slots",
			Flags: []cli.Flag{repoFlag},
			Action: func(c *cli.Context) error {
				r, err := open(c)
				if err != nil {
					return err
				}
				defer r.Close()
				slots, cur, err := r.Keys(c.Context)
				if err != nil {
					return err
				}
				o := outputOf(c)
				if o.json {
					type row struct {
						ID      string `json:"id"`
						Created string `json:"created"`
						Host    string `json:"host"`
						Current bool   `json:"current"`
					}
					rows := []row{}
					for _, s := range slots {
						rows = append(rows, row{s.ID, s.Created.Format(time.RFC3339), s.Host, s.ID == cur})
					}
					return o.printJSON(rows)
				}
				for _, s := range slots {
					mark := " "
					if s.ID == cur {
						mark = "*"
					}
					fmt.Printf("%s %s  %s  %s\n", mark, s.ID, s.Created.Format(time.RFC3339), s.Host)
				}
				return nil
			},
		}, {
			Name:  "add",
			Usage: "add a passphrase (from --new-password-file, VOLBACK_NEW_PASSWORD or a prompt)",
			Flags: []cli.Flag{repoFlag, &cli.StringFlag{Name: "new-password-file", Usage: "read the new passphrase from FILE"}},
			Action: func(c *cli.Context) error {
				r, err := open(c)
				if err != nil {
					return err
				}
				defer r.Close()
				if !r.Encrypted() {
					return errors.New("repository is not encrypted: it has no keys")
				}
				p, err := readPassphrase(c.String("new-password-file"), "VOLBACK_NEW_PASSWORD", "new passphrase", true)
				if err != nil {
					return err
				}
				id, err := r.AddKey(c.Context, p)
				if err != nil {
					return err
				}
				o := outputOf(c)
				if o.json {
					return o.printJSON(map[string]string{"id": id})
				}
				o.infof("added key %s", id)
				return nil
			},
		}, {
			Name:      "remove",
			Usage:     "revoke a key slot: its passphrase no longer opens the repository",
			ArgsUsage: "ID",
			Flags:     []cli.Flag{repoFlag},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return errors.New("key remove needs the key's ID (see key list)")
				}
				r, err := open(c)
				if err != nil {
					return err
				}
				defer r.Close()
				if err := r.RemoveKey(c.Context, c.Args().First()); err != nil {
					return err
				}
				outputOf(c).infof("removed key %s", c.Args().First())
				return nil
			},
		}},
	}
}
