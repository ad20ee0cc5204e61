package mem

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/volback/volback/chunkstore"
)

// Store is an in-memory chunkstore.Store, safe for concurrent use.
type Store struct {
	mu      sync.RWMutex
	objects map[string][]byte
}

var (
	_ chunkstore.Creator      = (*Store)(nil)
	_ chunkstore.BufferGetter = (*Store)(nil)
)

// New returns an empty Store.
func New() *Store { return &Store{objects: make(map[string][]byte)} }

// Location implements chunkstore.Store.
func (s *Store) Location() string { return "mem:" }

// check is every call's start: the context, then the name.
func check(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return chunkstore.ValidName(name)
}

// Put implements chunkstore.Store.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := check(ctx, name); err != nil {
		return err
	}
	b := append([]byte(nil), data...)
	s.mu.Lock()
	s.objects[name] = b
	s.mu.Unlock()
	return nil
}

// PutIfAbsent implements chunkstore.Creator.
func (s *Store) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	if err := check(ctx, name); err != nil {
		return err
	}
	b := append([]byte(nil), data...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objects[name]; ok {
		return fmt.Errorf("mem %s: %w", name, chunkstore.ErrExists)
	}
	s.objects[name] = b
	return nil
}

// Get implements chunkstore.Store.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.GetBuffer(ctx, name, nil)
}

// GetBuffer implements chunkstore.BufferGetter.
func (s *Store) GetBuffer(ctx context.Context, name string, buf []byte) ([]byte, error) {
	if err := check(ctx, name); err != nil {
		return nil, err
	}
	s.mu.RLock()
	b, ok := s.objects[name]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("mem %s: %w", name, chunkstore.ErrNotFound)
	}
	out := chunkstore.Grow(buf, len(b))
	copy(out, b)
	return out, nil
}

// Stat implements chunkstore.Store.
func (s *Store) Stat(ctx context.Context, name string) (chunkstore.Info, error) {
	if err := check(ctx, name); err != nil {
		return chunkstore.Info{}, err
	}
	s.mu.RLock()
	b, ok := s.objects[name]
	s.mu.RUnlock()
	if !ok {
		return chunkstore.Info{}, fmt.Errorf("mem %s: %w", name, chunkstore.ErrNotFound)
	}
	return chunkstore.Info{Name: name, Size: int64(len(b))}, nil
}

// List implements chunkstore.Store. fn runs without the lock held, so it
// may call back into the store.
func (s *Store) List(ctx context.Context, prefix string, fn func(chunkstore.Info) error) error {
	s.mu.RLock()
	var infos []chunkstore.Info
	for name, b := range s.objects {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, chunkstore.Info{Name: name, Size: int64(len(b))})
		}
	}
	s.mu.RUnlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements chunkstore.Store.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objects[name]; !ok {
		return fmt.Errorf("mem %s: %w", name, chunkstore.ErrNotFound)
	}
	delete(s.objects, name)
	return nil
}

// Sync implements chunkstore.Store.
func (s *Store) Sync(ctx context.Context) error { return ctx.Err() }

// Close implements chunkstore.Store.
func (s *Store) Close() error { return nil }

// Corrupt flips one bit of a stored object, for fault tests.
func (s *Store) Corrupt(name string, at int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.objects[name]
	if !ok {
		return fmt.Errorf("mem %s: %w", name, chunkstore.ErrNotFound)
	}
	b[at%len(b)] ^= 0x40
	return nil
}
