package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/volback/volback/chunkstore"
)

// Options tune the retries; zero values mean the defaults.
type Options struct {
	// Attempts is how many times a call is tried in all; default 3 (the
	// drivers retry within a call too: the S3 SDK, NFS retrans).
	Attempts int
	// Base is the first backoff's ceiling, doubled each retry; default
	// 200 ms.
	Base time.Duration
	// Max caps one backoff; default 10 s.
	Max time.Duration
	// OnRetry, if set, hears of every retry before its backoff.
	OnRetry func(op, name string, attempt int, err error)
}

// Store retries the transient errors of the store it wraps.
type Store struct {
	chunkstore.Store
	opts Options
}

// New wraps inner.
func New(inner chunkstore.Store, opts Options) *Store {
	if opts.Attempts <= 0 {
		opts.Attempts = 3
	}
	if opts.Base <= 0 {
		opts.Base = 200 * time.Millisecond
	}
	if opts.Max <= 0 {
		opts.Max = 10 * time.Second
	}
	return &Store{Store: inner, opts: opts}
}

// Unwrap returns the wrapped store.
func (s *Store) Unwrap() chunkstore.Store { return s.Store }

// do runs fn until it succeeds, fails permanently, runs out of attempts
// or ctx ends. retried tells fn whether an earlier attempt failed.
func (s *Store) do(ctx context.Context, op, name string, fn func(retried bool) error) error {
	var err error
	for attempt := 0; ; attempt++ {
		if err = fn(attempt > 0); err == nil || !chunkstore.IsTransient(err) {
			return err
		}
		if attempt+1 >= s.opts.Attempts {
			return fmt.Errorf("%s %s: gave up after %d attempts: %w", op, name, s.opts.Attempts, err)
		}
		if s.opts.OnRetry != nil {
			s.opts.OnRetry(op, name, attempt+1, err)
		}
		// Full jitter: a random wait up to the doubled ceiling, so many
		// writers hit by one outage do not come back in step.
		ceiling := min(s.opts.Max, s.opts.Base<<attempt)
		t := time.NewTimer(rand.N(ceiling) + time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Put implements chunkstore.Store.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	return s.do(ctx, "put", name, func(bool) error { return s.Store.Put(ctx, name, data) })
}

// Get implements chunkstore.Store.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter, reading through the
// wrapped store's GetBuffer where it has one.
func (s *Store) GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error) {
	var b []byte
	err := s.do(ctx, "get", name, func(bool) error {
		var err error
		b, err = chunkstore.GetBuffer(ctx, s.Store, name, buf)
		return err
	})
	return b, err
}

// Stat implements chunkstore.Store.
func (s *Store) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	var info chunkstore.Info
	err := s.do(ctx, "stat", name, func(bool) error {
		var err error
		info, err = s.Store.Stat(ctx, name)
		return err
	})
	return info, err
}

// List implements chunkstore.Store. A listing is retried only while it
// has not yet handed any entry to fn.
func (s *Store) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	var final error // the error of a listing that cannot be retried
	err := s.do(ctx, "list", prefix, func(bool) error {
		seen := false
		err := s.Store.List(ctx, prefix, func(i chunkstore.Info) error {
			seen = true
			return fn(i)
		})
		if err != nil && seen {
			final = err
			return nil
		}
		return err
	})
	if final != nil {
		return final
	}
	return err
}

// Delete implements chunkstore.Store. A delete retried after a transient
// failure that finds the object gone counts as done: the earlier attempt
// most likely removed it.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.do(ctx, "delete", name, func(retried bool) error {
		err := s.Store.Delete(ctx, name)
		if retried && errors.Is(err, chunkstore.ErrNotFound) {
			return nil
		}
		return err
	})
}

// Sync implements chunkstore.Store.
func (s *Store) Sync(ctx context.Context) error {
	return s.do(ctx, "sync", s.Location(), func(bool) error { return s.Store.Sync(ctx) })
}

// PutIfAbsent implements chunkstore.Creator when the wrapped store does.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	c, ok := s.Store.(chunkstore.Creator)
	if !ok {
		return fmt.Errorf("%s: conditional create: %w", s.Location(), errors.ErrUnsupported)
	}
	return s.do(ctx, "create", name, func(retried bool) error {
		err := c.PutIfAbsent(ctx, name, data)
		if retried && errors.Is(err, chunkstore.ErrExists) {
			// Did the attempt that failed create it after all?
			if got, gerr := s.Store.Get(ctx, name); gerr == nil && bytes.Equal(got, data) {
				return nil
			}
		}
		return err
	})
}

// RemoveStale implements chunkstore.StaleRemover when the wrapped store does.
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) (int, error) {
	r, ok := s.Store.(chunkstore.StaleRemover)
	if !ok {
		return 0, nil
	}
	return r.RemoveStale(ctx, age)
}

// The wrapper reads into the caller's buffer wherever the wrapped store can.
var _ chunkstore.BufferGetter = (*Store)(nil)
