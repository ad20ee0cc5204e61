package nbd

import (
	"context"
	"errors"
	"os"
)

// Backend is the storage behind an export. Offsets and lengths are
// validated by the server before any call, so a Backend never sees a range
// outside [0, Size()). Calls may come concurrently from many requests and
// connections.
type Backend interface {
	// Size is the export's size in bytes; it does not change while the
	// export is served.
	Size() int64
	// ReadAt fills p from offset off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; with fua the data is durable on return.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write that has completed, on any connection,
	// durable.
	Flush(ctx context.Context) error
	// Trim discards a range; reading it afterwards may return anything.
	Trim(ctx context.Context, off, length int64, fua bool) error
	// Zero writes zeros over a range. With noHole the range stays
	// allocated; with fast the call must fail with ErrNotFast rather than
	// fall back to writing zeros slowly.
	Zero(ctx context.Context, off, length int64, f ZeroFlags) error
	// Cache is a hint that the range will be read soon.
	Cache(ctx context.Context, off, length int64) error
	// MetaContexts lists the metadata contexts the backend can describe,
	// such as "base:allocation" and "qemu:dirty-bitmap:<name>".
	MetaContexts() []string
	// BlockStatus calls fn for consecutive extents of the metadata
	// context, starting at off, covering at least one byte and at most
	// length bytes, until fn returns false.
	BlockStatus(ctx context.Context, metaContext string, off, length int64, fn func(length int64, flags uint32) bool) error
}

// ZeroFlags qualify a Zero call.
type ZeroFlags struct {
	NoHole bool
	FUA    bool
	Fast   bool
}

// ErrNotFast is returned by Backend.Zero when a fast zero was asked for
// and the backend cannot zero the range without writing it.
var ErrNotFast = errors.New("nbd: zeroing would not be fast")

// Flags of the base:allocation metadata context.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// StateDirty is the flag of a qemu:dirty-bitmap:<name> metadata context.
const StateDirty uint32 = 1 << 0

// Well-known metadata context names.
const (
	MetaBaseAllocation   = "base:allocation"
	MetaDirtyBitmapSpace = "qemu:dirty-bitmap:"
)

// FileReader is implemented by backends whose data lies in a file at the
// export's own offsets. Their reads go from the file's page cache straight
// to the socket (sendfile(2)): one copy of the data instead of two, which
// is most of a large read's cost.
type FileReader interface {
	// ReadFile readies [off, off+length) for reading from the file (a
	// volume being restored copies it in first) and returns the file.
	// The server reads it with sendfile, so the file must stay open
	// while the export is served.
	ReadFile(ctx context.Context, off, length int64) (*os.File, error)
}

// FileWriter is implemented by backends whose data lies in a file at the
// export's own offsets. Large writes then go from the socket into the
// file through a pipe (splice(2)), copied once, into the page cache,
// instead of twice.
type FileWriter interface {
	// WriteFile runs a write of length bytes at off as WriteAt would
	// (a range being restored is copied in first, running backups keep
	// the old data, the maps are marked), except that the payload is
	// put into f at [off, off+length) by fill, which the backend calls
	// where it would write. An error before that returns without
	// calling fill; fill's error is returned. With fua the data is
	// durable on return.
	WriteFile(ctx context.Context, off, length int64, fua bool, fill func(f *os.File) error) error
}
