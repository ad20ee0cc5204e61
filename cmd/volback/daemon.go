package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/volback/volback/control"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the daemon: ZStack-compatible API, volumes over NBD, backup jobs",
		Flags: append([]cli.Flag{
			stateDirFlag,
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8080", Usage: "API address", EnvVars: []string{"VOLBACK_LISTEN"}},
			&cli.StringFlag{Name: "nbd-listen", Usage: "unix:///PATH or tcp://HOST:PORT (default unix://<state-dir>/nbd.sock)"},
			&cli.StringSliceFlag{Name: "volume", Usage: "UUID=PATH of an existing image or block device to register and export (repeatable)"},
			&cli.StringFlag{Name: "admin-password", Usage: "the admin account's password (default \"password\")", EnvVars: []string{"VOLBACK_ADMIN_PASSWORD"}},
			&cli.DurationFlag{Name: "gc-interval", Value: 24 * time.Hour, Usage: "garbage-collect every backup storage this often (0 = only on ReclaimSpaceFromImageStore)"},
			&cli.StringFlag{Name: "s3-access-key-id", Usage: "access key for S3 targets (default: the standard AWS chain)", EnvVars: []string{"VOLBACK_S3_ACCESS_KEY_ID"}},
			&cli.StringFlag{Name: "s3-secret-access-key", Usage: "secret key for S3 targets", EnvVars: []string{"VOLBACK_S3_SECRET_ACCESS_KEY"}},
			&cli.BoolFlag{Name: "debug", Usage: "log every NBD connection"},
			&cli.StringFlag{Name: "tls-cert", Usage: "serve the API over HTTPS (TLS 1.3) with this PEM certificate (chain)"},
			&cli.StringFlag{Name: "tls-key", Usage: "the PEM private key of --tls-cert"},
			&cli.StringFlag{Name: "api-url", Usage: "the API's URL as clients reach it, e.g. https://backup1.example.com:8080 (job locations are built from it; default: the address each connection arrived at)"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow the API off loopback without TLS and NBD over TCP without TLS (a network nothing else reaches)"},
			&cli.DurationFlag{Name: "verify-interval", Value: 7 * 24 * time.Hour, Usage: "re-read and check every backup this often (0 = only on VerifyVolumeBackup)"},
			&cli.BoolFlag{Name: "rebuild-inventory", Usage: "rebuild the inventory from its newest good copy, the state directory and the repositories, then start (the damaged one is kept aside)"},
			&cli.DurationFlag{Name: "inventory-copy-interval", Value: time.Hour, Usage: "write a consistent copy of the inventory to <state-dir>/inventory-copies this often (3 kept)"},
		}, nbdTLSFlags()...),
		Action: func(c *cli.Context) error {
			vols, err := control.ParseVolumeFlags(c.StringSlice("volume"))
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if c.Bool("debug") {
				level = slog.LevelDebug
			}
			return control.RunDaemon(c.Context, control.DaemonConfig{
				StateDir: c.String("state-dir"), Listen: c.String("listen"), NBDListen: c.String("nbd-listen"),
				Volumes: vols, AdminPassword: c.String("admin-password"), GCInterval: c.Duration("gc-interval"),
				RebuildInventory: c.Bool("rebuild-inventory"), InventoryCopyInterval: c.Duration("inventory-copy-interval"),
				VerifyInterval: c.Duration("verify-interval"),
				S3AccessKeyID:  c.String("s3-access-key-id"), S3SecretAccessKey: c.String("s3-secret-access-key"),
				Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
				TLSCert: c.String("tls-cert"), TLSKey: c.String("tls-key"), APIURL: c.String("api-url"), Insecure: c.Bool("insecure"),
				NBDTLSCert: c.String("nbd-tls-cert"), NBDTLSKey: c.String("nbd-tls-key"), NBDTLSCA: c.String("nbd-tls-ca"),
			})
		},
	}
}

// nbdTLSFlags are the NBD server's TLS settings, the daemon's and serve's.
func nbdTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nbd-tls-cert", Usage: "PEM certificate for NBD over TCP (STARTTLS, then required); default --tls-cert"},
		&cli.StringFlag{Name: "nbd-tls-key", Usage: "the PEM private key of --nbd-tls-cert"},
		&cli.StringFlag{Name: "nbd-tls-ca", Usage: "require NBD clients to present a certificate signed by this PEM CA"},
	}
}
