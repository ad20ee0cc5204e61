package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/volback/volback/chunkstore"
)

// Store limits the bandwidth of Put and Get on the wrapped store.
type Store struct {
	chunkstore.Store
	write, read *rate.Limiter
}

// New wraps inner. A limit of 0 leaves that direction unlimited.
func New(inner chunkstore.Store, writeBytesPerSec, readBytesPerSec int64) *Store {
	return &Store{Store: inner, write: NewLimiter(writeBytesPerSec), read: NewLimiter(readBytesPerSec)}
}

// NewLimiter returns a limiter of bytesPerSec, or nil for 0 (unlimited).
// The burst is a tenth of a second's worth (at least 64 KiB), so a limit
// holds over short intervals too.
func NewLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(max(bytesPerSec/10, 64<<10)))
}

// Wait blocks until n bytes may pass l (nil passes everything), waiting in
// pieces no larger than the burst.
func Wait(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// Put implements chunkstore.Store.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := Wait(ctx, s.write, len(data)); err != nil {
		return err
	}
	return s.Store.Put(ctx, name, data)
}

// Get implements chunkstore.Store.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter, limited like Get.
func (s *Store) GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error) {
	b, err := chunkstore.GetBuffer(ctx, s.Store, name, buf)
	if err != nil {
		return nil, err
	}
	return b, Wait(ctx, s.read, len(b))
}

// PutIfAbsent passes a conditional create through, limited like Put, if
// the wrapped store can do one (chunkstore.Creator).
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	c, ok := s.Store.(chunkstore.Creator)
	if !ok {
		return fmt.Errorf("%s: conditional create: %w", s.Location(), errors.ErrUnsupported)
	}
	if err := Wait(ctx, s.write, len(data)); err != nil {
		return err
	}
	return c.PutIfAbsent(ctx, name, data)
}

// RemoveStale passes through to the wrapped store (chunkstore.StaleRemover).
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) (int, error) {
	if r, ok := s.Store.(chunkstore.StaleRemover); ok {
		return r.RemoveStale(ctx, age)
	}
	return 0, nil
}

// The wrapper reads into the caller's buffer wherever the wrapped store can.
var _ chunkstore.BufferGetter = (*Store)(nil)
