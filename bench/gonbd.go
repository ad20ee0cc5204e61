package bench

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"
)

// ServeGoNBD serves file as export "bench" on a Unix socket with the
// go-nbd v0.3.2 server and its file backend: the baseline the NBD bench
// compares against. It runs until ctx is done.
func ServeGoNBD(ctx context.Context, file, sock string) error {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	exports := []*server.Export{{Name: "bench", Backend: backend.NewFileBackend(f)}}
	opts := &server.Options{MinimumBlockSize: 1, PreferredBlockSize: 4096, MaximumBlockSize: 32 << 20, SupportsMultiConn: true}
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("go-nbd accept: %w", err)
		}
		go func() {
			defer c.Close()
			_ = server.Handle(c, exports, opts)
		}()
	}
}
