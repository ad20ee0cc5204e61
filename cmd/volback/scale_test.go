package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/storetest"
)

// writeManifests fills a new local repository at dir with n backups of
// 1 GiB volumes (4 MiB chunks).
func writeManifests(tb testing.TB, dir string, n int) {
	tb.Helper()
	st, err := local.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	r, err := chunkstore.Init(context.Background(), st, chunkstore.InitOptions{ChunkSize: 4 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	storetest.SaveManifests(tb, r, n, 1000)
}

// BenchmarkScale10000: with 10,000 backups of 1 GiB volumes in a
// repository, `volback ls` without the backup index (every manifest read,
// then the index written) and with it; and the daemon's start (until its
// API logs a client in) with those 10,000 backups in its inventory, beside
// an empty one.
func BenchmarkScale10000(b *testing.B) {
	const n = 10_000
	dir := b.TempDir()
	repo := filepath.Join(dir, "repo")
	start := time.Now()
	writeManifests(b, repo, n)
	b.Logf("%d manifests written in %v", n, time.Since(start).Round(time.Millisecond))
	ls := func(b *testing.B) {
		out, err := exec.Command(volbackBin, "ls", "--repo", repo).Output()
		if err != nil {
			b.Fatal(err)
		}
		if lines := strings.Count(string(out), "\n"); lines != n+1 {
			b.Fatalf("ls printed %d lines, want %d", lines, n+1)
		}
	}
	b.Run("ls-no-index", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			if err := os.RemoveAll(filepath.Join(repo, "index")); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			ls(b)
		}
	})
	b.Run("ls-index", func(b *testing.B) {
		ls(b) // writes the index
		for b.Loop() {
			ls(b)
		}
	})
	const bs = "5ca1e000000000000000000000000000"
	state := filepath.Join(dir, "state")
	d := startDaemon(b, state)
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+repo+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		b.Fatalf("add storage: %d %s", r.status, r.body)
	}
	start = time.Now()
	if r := d.job("PUT", "/volume-backups/imageStore/"+bs+"/actions", `{"syncVolumeBackup":{}}`, nil); r.status != 200 {
		b.Fatalf("sync: %d %s", r.status, r.body)
	}
	b.Logf("SyncVolumeBackup imported %d backups in %v", n, time.Since(start).Round(time.Millisecond))
	d.stop()
	for _, c := range []struct{ name, state string }{{"daemon-start-10000", state}, {"daemon-start-empty", filepath.Join(dir, "empty")}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				d := startDaemon(b, c.state)
				b.StopTimer()
				d.stop()
				b.StartTimer()
			}
		})
	}
}
