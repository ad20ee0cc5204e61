package main

import (
	"errors"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control"
)

var stateDirFlag = &cli.StringFlag{
	Name:    "state-dir",
	Value:   "volback-data",
	Usage:   "directory for sockets and changed-block maps",
	EnvVars: []string{"VOLBACK_STATE_DIR"},
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "export volumes over NBD, tracking changed blocks, and backups read-only, until SIGTERM",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "volume", Usage: "UUID=PATH of a raw file or block device to export (repeatable)"},
			&cli.StringSliceFlag{Name: "backup", Usage: "id of a backup in --repo to export read-only, under its id (repeatable)"},
			&cli.StringFlag{Name: "repo", Aliases: []string{"r"}, Usage: "repository of the --backup exports (a directory, nfs:// or s3:// URL)", EnvVars: []string{"VOLBACK_REPO"}},
			&cli.StringFlag{Name: "nbd-listen", Usage: "unix:///PATH or tcp://HOST:PORT (default unix://<state-dir>/nbd.sock)"},
			stateDirFlag,
			&cli.BoolFlag{Name: "debug", Usage: "log every NBD connection"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow NBD over TCP without TLS"},
		}, nbdTLSFlags()...),
		Action: func(c *cli.Context) error {
			vols, err := control.ParseVolumeFlags(c.StringSlice("volume"))
			if err != nil {
				return err
			}
			if len(vols) == 0 && len(c.StringSlice("backup")) == 0 {
				return errors.New("serve needs at least one --volume UUID=PATH or --backup ID")
			}
			var repo *chunkstore.Repository
			if len(c.StringSlice("backup")) > 0 {
				if stringFlag(c, "repo") == "" {
					return errors.New("--backup needs --repo")
				}
				if repo, err = openRepo(c, target.OpenExisting, chunkstore.InitOptions{}); err != nil {
					return err
				}
				defer repo.Close()
			}
			level := slog.LevelInfo
			if c.Bool("debug") {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			// serve is the daemon without the ZStack API.
			return control.RunDaemon(c.Context, control.DaemonConfig{
				NoAPI: true, StateDir: c.String("state-dir"), Volumes: vols, NBDListen: c.String("nbd-listen"), Logger: log,
				Repo: repo, Backups: c.StringSlice("backup"),
				S3AccessKeyID: os.Getenv("VOLBACK_S3_ACCESS_KEY_ID"), S3SecretAccessKey: os.Getenv("VOLBACK_S3_SECRET_ACCESS_KEY"),
				Insecure: c.Bool("insecure"), NBDTLSCert: c.String("nbd-tls-cert"), NBDTLSKey: c.String("nbd-tls-key"), NBDTLSCA: c.String("nbd-tls-ca"),
			})
		},
	}
}
