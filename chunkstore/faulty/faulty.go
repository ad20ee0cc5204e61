package faulty

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/volback/volback/chunkstore"
)

// ErrInjected is the error a Store returns when it fails on purpose.
var ErrInjected = errors.New("injected fault")

// Store passes calls to Inner until a rule says to fail.
type Store struct {
	chunkstore.Store
	// FailPutAfter, if positive, makes every Put after that many
	// successful ones fail.
	FailPutAfter int64
	// FailGet, if set, makes every Get of a name it returns true for fail.
	FailGet func(name string) bool
	// Transient marks injected errors as transient.
	Transient bool

	puts atomic.Int64
}

// New wraps inner.
func New(inner chunkstore.Store) *Store { return &Store{Store: inner} }

func (s *Store) fault() error {
	if s.Transient {
		return chunkstore.Transient(ErrInjected)
	}
	return ErrInjected
}

// Put implements chunkstore.Store.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if s.FailPutAfter > 0 && s.puts.Add(1) > s.FailPutAfter {
		return s.fault()
	}
	return s.Store.Put(ctx, name, data)
}

// Get implements chunkstore.Store.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter, failing like Get.
func (s *Store) GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if s.FailGet != nil && s.FailGet(name) {
		return nil, s.fault()
	}
	return chunkstore.GetBuffer(ctx, s.Store, name, buf)
}

// Puts returns the number of Put calls so far.
func (s *Store) Puts() int64 { return s.puts.Load() }

// The wrapper reads into the caller's buffer wherever the wrapped store can.
var _ chunkstore.BufferGetter = (*Store)(nil)
