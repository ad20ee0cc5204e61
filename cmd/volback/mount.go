package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/fusefs"
)

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a repository's backups read-only with FUSE: <volume>/<backup>.raw images and by-name/, until SIGINT/SIGTERM or fusermount3 -u",
		ArgsUsage: "MOUNTPOINT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "repo", Aliases: []string{"r"}, Usage: "repository: a directory, nfs://HOST/PATH?OPTIONS or s3://BUCKET/PREFIX?endpoint=...", EnvVars: []string{"VOLBACK_REPO"}},
			&cli.StringFlag{Name: "storage", Usage: "mount the repository of this backup storage UUID of a running daemon, instead of --repo"},
			&cli.StringFlag{Name: "api", Value: "http://127.0.0.1:8080", Usage: "the daemon's API, for --storage"},
			&cli.StringFlag{Name: "password", Value: "password", Usage: "the daemon's admin password, for --storage", EnvVars: []string{"VOLBACK_ADMIN_PASSWORD"}},
			&cli.IntFlag{Name: "cache-chunks", Value: 32, Usage: "decoded chunks kept in memory per open image"},
			&cli.IntFlag{Name: "read-ahead", Value: 8, Usage: "chunks fetched ahead of a sequential reader"},
			&cli.BoolFlag{Name: "allow-other", Usage: "let other users read the mount"},
			&cli.BoolFlag{Name: "kernel-cache", Usage: "let the kernel cache image pages (fast re-reads, mmap) instead of direct I/O (faster first reads)"},
			&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("mount needs MOUNTPOINT")
			}
			dir := c.Args().First()
			repoURL := stringFlag(c, "repo")
			if s := c.String("storage"); s != "" {
				u, err := storageURL(c.Context, c.String("api"), c.String("password"), s)
				if err != nil {
					return err
				}
				repoURL = u
			}
			if repoURL == "" {
				return errors.New("mount needs --repo or --storage")
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			repo, err := openRepoURL(c, repoURL, target.OpenExisting, chunkstore.InitOptions{})
			if err != nil {
				return err
			}
			defer repo.Close()
			start := time.Now()
			srv, fsys, err := fusefs.Mount(c.Context, repo, dir, fusefs.Options{
				Image:      dataplane.ImageOptions{CacheChunks: c.Int("cache-chunks"), ReadAhead: c.Int("read-ahead")},
				AllowOther: c.Bool("allow-other"), Logger: log, Debug: c.Bool("debug"), KernelCache: c.Bool("kernel-cache"),
			})
			if err != nil {
				return err
			}
			defer fsys.Close()
			o := outputOf(c)
			o.infof("mounted %d backups of %s at %s in %s; unmount with Ctrl-C or fusermount3 -u %s",
				len(fsys.Backups()), repo.Location(), dir, time.Since(start).Round(time.Millisecond), dir)
			done := make(chan struct{})
			go func() { srv.Wait(); close(done) }()
			select {
			case <-done: // unmounted from outside
				return nil
			case <-c.Context.Done():
			}
			// Unmount; a busy mount (an open file, a loop device) is
			// retried for a while, then detached lazily so the process
			// can end and the kernel finishes when the last user goes.
			for i := 0; ; i++ {
				err := srv.Unmount()
				if err == nil {
					break
				}
				if i == 20 {
					log.Warn("mount busy; detaching it lazily", "mountpoint", dir, "err", err)
					if out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); err != nil {
						return fmt.Errorf("unmount %s: %v: %s", dir, err, out)
					}
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			return nil
		},
	}
}

// storageURL asks a running daemon for a backup storage's url.
func storageURL(ctx context.Context, api, password, uuid string) (string, error) {
	api = strings.TrimSuffix(api, "/") + "/zstack/v1"
	sum := sha512.Sum512([]byte(password))
	body := fmt.Sprintf(`{"logInByAccount":{"accountName":"admin","password":"%s"}}`, hex.EncodeToString(sum[:]))
	call := func(method, path, auth, body string, v any) error {
		req, err := http.NewRequestWithContext(ctx, method, api+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		if auth != "" {
			req.Header.Set("Authorization", "OAuth "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("daemon at %s: %w", api, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != 200 {
			return fmt.Errorf("daemon at %s: %s %s: %d %s", api, method, path, resp.StatusCode, b)
		}
		return json.Unmarshal(b, v)
	}
	var login struct{ Inventory struct{ UUID string } }
	if err := call("PUT", "/accounts/login", "", body, &login); err != nil {
		return "", err
	}
	defer func() { _ = call("DELETE", "/accounts/sessions/"+login.Inventory.UUID, "", "", &struct{}{}) }()
	var q struct{ Inventories []struct{ URL string } }
	if err := call("GET", "/backup-storage/"+uuid, login.Inventory.UUID, "", &q); err != nil {
		return "", err
	}
	if len(q.Inventories) != 1 {
		return "", fmt.Errorf("daemon at %s has no backup storage %s", api, uuid)
	}
	return q.Inventories[0].URL, nil
}
