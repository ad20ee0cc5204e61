package dataplane

import (
	"context"
	"fmt"
	"syscall"

	"github.com/volback/volback/nbd"
)

// ImageBackend serves an Image as a read-only NBD export: qemu-img and
// nbdcopy pull a backup through it, and base:allocation reports its zero
// chunks as holes, so they skip them.
type ImageBackend struct{ *Image }

var _ nbd.Backend = ImageBackend{}

var errReadOnly = fmt.Errorf("a backup is read-only: %w", syscall.EPERM)

// ReadAt implements nbd.Backend.
func (b ImageBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	return b.Image.ReadAt(ctx, p, off)
}

// WriteAt implements nbd.Backend: refused.
func (ImageBackend) WriteAt(context.Context, []byte, int64, bool) error { return errReadOnly }

// Flush implements nbd.Backend: nothing to flush.
func (ImageBackend) Flush(context.Context) error { return nil }

// Trim implements nbd.Backend: refused.
func (ImageBackend) Trim(context.Context, int64, int64, bool) error { return errReadOnly }

// Zero implements nbd.Backend: refused.
func (ImageBackend) Zero(context.Context, int64, int64, nbd.ZeroFlags) error { return errReadOnly }

// Cache implements nbd.Backend: fetches the range's chunks into the cache.
func (b ImageBackend) Cache(ctx context.Context, off, length int64) error {
	cs := int64(b.m.ChunkSize)
	for i := off / cs; i*cs < min(off+length, b.m.Size); i++ {
		if !b.m.Chunks[i].IsZero() {
			if _, err := b.chunk(ctx, int(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// MetaContexts implements nbd.Backend.
func (ImageBackend) MetaContexts() []string { return []string{nbd.MetaBaseAllocation} }

// BlockStatus implements nbd.Backend: zero chunks are holes that read as
// zeros; every other chunk is data.
func (b ImageBackend) BlockStatus(_ context.Context, meta string, off, length int64, fn func(int64, uint32) bool) error {
	if meta != nbd.MetaBaseAllocation {
		return fmt.Errorf("unknown metadata context %q: %w", meta, syscall.EINVAL)
	}
	b.Extents(off, length, func(l int64, zero bool) bool {
		if zero {
			return fn(l, nbd.StateHole|nbd.StateZero)
		}
		return fn(l, 0)
	})
	return nil
}
