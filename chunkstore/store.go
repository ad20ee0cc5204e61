package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) by a Store when an object does not exist.
var ErrNotFound = errors.New("object not found")

// Info describes one stored object.
type Info struct {
	Name string
	Size int64
}

// Store is a flat namespace of immutable objects. Names are slash-separated
// paths of non-empty segments (see ValidName).
//
// The guarantees every driver gives, and storetest checks:
//   - Put is atomic: a reader sees the whole object or none of it, never a
//     partial one, even if the writer dies midway.
//   - Put is idempotent: putting the same name and content again, from any
//     number of goroutines or processes, is harmless.
//   - Read-your-writes: once Put returns, Get, Stat and List on the same Store
//     value see the object.
//   - Sync is a durability barrier: once it returns, every object put on this
//     Store value before the call survives a crash or power loss. Objects put
//     but not yet synced may be lost by a crash, never half-written.
//   - Errors: a missing object is reported as ErrNotFound (wrapped); every
//     other error is classified by the driver, and IsTransient tells whether
//     retrying may help.
//   - Every method honours ctx cancellation.
type Store interface {
	// Put stores data under name, replacing any object of that name.
	Put(ctx context.Context, name string, data []byte) error
	// Get returns the object's content.
	Get(ctx context.Context, name string) ([]byte, error)
	// Stat returns the object's size without reading it.
	Stat(ctx context.Context, name string) (Info, error)
	// List calls fn for every object whose name starts with prefix, in no
	// particular order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes an object. Deleting a missing object returns ErrNotFound.
	Delete(ctx context.Context, name string) error
	// Sync makes every object put before the call durable.
	Sync(ctx context.Context) error
	// Close releases the driver's resources. Objects put but not synced may
	// be discarded.
	Close() error
	// Location names the store for messages, e.g. "local:/srv/backup".
	Location() string
}

// BufferGetter is a Store that can read an object into storage the
// caller provides. A restore reads every chunk into the buffer it then
// writes from: through Get, each 4 MiB chunk cost an allocation and the
// zeroing of it, a seventh of a restore's CPU time.
type BufferGetter interface {
	// GetBuffer returns the object's content in buf's storage when it
	// fits in buf's capacity, else in new storage. Get is GetBuffer with
	// a nil buf.
	GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error)
}

// GetBuffer reads an object into buf's storage where s can (a
// BufferGetter), else through Get.
func GetBuffer(ctx context.Context, s Store, name string, buf []byte) ([]byte, error) {
	if g, ok := s.(BufferGetter); ok {
		return g.GetBuffer(ctx, name, buf)
	}
	return s.Get(ctx, name)
}

// Grow returns a slice of length n in buf's storage if its capacity
// holds n bytes, else in new storage: what a BufferGetter reads into.
func Grow(buf []byte, n int) []byte {
	if cap(buf) >= n {
		return buf[:n]
	}
	return make([]byte, n)
}

// ErrExists is returned (wrapped) by PutIfAbsent when the name is taken.
var ErrExists = errors.New("object already exists")

// Creator is a Store that can create an object only if its name is free,
// atomically, durably, and visibly to every other writer once it returns
// (If-None-Match on S3, link(2) on a local filesystem). Repository.Init
// uses it so that writers starting at once on an empty store agree on one
// config. A wrapper whose inner store lacks it returns errors.ErrUnsupported.
type Creator interface {
	PutIfAbsent(ctx context.Context, name string, data []byte) error
}

// StaleRemover is a Store whose writers leave temporary objects behind
// when they die (the local and NFS drivers write under a temporary name,
// then rename). RemoveStale deletes those older than age, which must be
// longer than any write takes; garbage collection calls it.
type StaleRemover interface {
	RemoveStale(ctx context.Context, age time.Duration) (int, error)
}

// transientError marks an error that may go away if the call is retried.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// Transient marks err as transient: the same call may succeed if retried
// (a timeout, a dropped connection, throttling). Drivers use it; errors they
// do not mark are permanent.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// IsTransient reports whether retrying the call that returned err may help.
// Not-found, cancellation and every unmarked error are permanent.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, context.Canceled) {
		return false
	}
	var t *transientError
	return errors.As(err, &t)
}

// ValidName reports whether name is a valid object name: slash-separated,
// non-empty segments that are neither "." nor "..", no leading or trailing
// slash, no NUL and no backslash, at most 1024 bytes.
func ValidName(name string) error {
	if name == "" || len(name) > 1024 {
		return fmt.Errorf("invalid object name %q: length must be 1..1024", name)
	}
	if strings.ContainsAny(name, "\x00\\") {
		return fmt.Errorf("invalid object name %q: contains NUL or backslash", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid object name %q: empty, '.' or '..' segment", name)
		}
	}
	return nil
}
