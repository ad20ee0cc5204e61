package nbdexport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

// Volume is a live volume as an NBD backend.
type Volume struct{ *dataplane.Volume }

var _ nbd.Backend = Volume{}
var _ nbd.FileReader = Volume{}
var _ nbd.FileWriter = Volume{}

// ReadFile implements nbd.FileReader: the volume's file, once the range
// is restored (if the volume is being restored).
func (v Volume) ReadFile(ctx context.Context, off, length int64) (*os.File, error) {
	return v.Volume.ReadFile(ctx, off, length)
}

// Zero implements nbd.Backend.
func (v Volume) Zero(ctx context.Context, off, length int64, f nbd.ZeroFlags) error {
	err := v.Volume.Zero(ctx, off, length, dataplane.ZeroOptions{NoHole: f.NoHole, FUA: f.FUA, Fast: f.Fast})
	if errors.Is(err, dataplane.ErrNotFast) {
		return nbd.ErrNotFast
	}
	return err
}

// MetaContexts implements nbd.Backend: base:allocation and one
// qemu:dirty-bitmap:<chain> per backup chain.
func (v Volume) MetaContexts() []string {
	out := []string{nbd.MetaBaseAllocation}
	for _, n := range v.Chains() {
		out = append(out, nbd.MetaDirtyBitmapSpace+n)
	}
	return out
}

// BlockStatus implements nbd.Backend.
func (v Volume) BlockStatus(_ context.Context, meta string, off, length int64, fn func(int64, uint32) bool) error {
	if meta == nbd.MetaBaseAllocation {
		return v.Allocation(off, length, func(l int64, hole bool) bool {
			if hole {
				return fn(l, nbd.StateHole|nbd.StateZero)
			}
			return fn(l, 0)
		})
	}
	if chain, ok := strings.CutPrefix(meta, nbd.MetaDirtyBitmapSpace); ok && chain != "" {
		return v.DirtyRuns(chain, off, length, func(l int64, dirty bool) bool {
			if dirty {
				return fn(l, nbd.StateDirty)
			}
			return fn(l, 0)
		})
	}
	return fmt.Errorf("unknown metadata context %q: %w", meta, syscall.EINVAL)
}

// Image serves a backup image as a read-only NBD export: qemu-img and
// nbdcopy pull a backup through it, and base:allocation reports its zero
// chunks as holes, so they skip them.
type Image struct{ *dataplane.Image }

var _ nbd.Backend = Image{}

var errReadOnly = fmt.Errorf("a backup is read-only: %w", syscall.EPERM)

// WriteAt implements nbd.Backend: refused.
func (Image) WriteAt(context.Context, []byte, int64, bool) error { return errReadOnly }

// Flush implements nbd.Backend: nothing to flush.
func (Image) Flush(context.Context) error { return nil }

// Trim implements nbd.Backend: refused.
func (Image) Trim(context.Context, int64, int64, bool) error { return errReadOnly }

// Zero implements nbd.Backend: refused.
func (Image) Zero(context.Context, int64, int64, nbd.ZeroFlags) error { return errReadOnly }

// Cache implements nbd.Backend: fetches the range's chunks into the cache.
func (b Image) Cache(ctx context.Context, off, length int64) error {
	return b.Prefetch(ctx, off, length)
}

// MetaContexts implements nbd.Backend.
func (Image) MetaContexts() []string { return []string{nbd.MetaBaseAllocation} }

// BlockStatus implements nbd.Backend: zero chunks are holes that read as
// zeros; every other chunk is data.
func (b Image) BlockStatus(_ context.Context, meta string, off, length int64, fn func(int64, uint32) bool) error {
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
