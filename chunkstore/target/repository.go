package target

import (
	"context"
	"errors"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/ratelimit"
	"github.com/volback/volback/chunkstore/retry"
)

// Create says what OpenRepository does when the target holds no
// repository, or holds one already.
type Create int

const (
	// OpenExisting fails with chunkstore.ErrNoRepository on an empty
	// target.
	OpenExisting Create = iota
	// CreateIfMissing creates a repository on an empty target; writers
	// racing on one agree on a single config.
	CreateIfMissing
	// CreateNew creates a repository and fails with
	// chunkstore.ErrRepositoryExists if the target has one.
	CreateNew
)

// RepoOptions says how OpenRepository opens a repository.
type RepoOptions struct {
	Create Create
	// Init configures a repository that is created (Init.Passphrase
	// makes it encrypted).
	Init chunkstore.InitOptions
	// Passphrase opens an encrypted repository; it is called only if the
	// repository is one.
	Passphrase chunkstore.PassphraseFunc
	// WriteBytesPerSec and ReadBytesPerSec limit the store's bandwidth
	// (networkWriteBandwidth, networkReadBandwidth); 0 is no limit.
	WriteBytesPerSec, ReadBytesPerSec int64
	// Retry tunes the retries of transient errors.
	Retry retry.Options
	// NoRetry leaves transient errors to the caller (verify, which
	// reports them, and tests of the drivers themselves).
	NoRetry bool
}

// OpenRepository is the one way volback opens a repository: it connects
// to the target, wraps its store in the retries of transient errors and
// the bandwidth limits, and opens (or creates) the repository there.
func OpenRepository(ctx context.Context, spec Spec, env Env, opts RepoOptions) (*chunkstore.Repository, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	st, err := Open(ctx, spec, env)
	if err != nil {
		return nil, err
	}
	repo, err := OpenRepositoryOn(ctx, st, opts)
	if err != nil {
		st.Close()
		return nil, err // it names the store already
	}
	return repo, nil
}

// OpenRepositoryOn is OpenRepository on a store already open: the same
// wrappers and the same create modes. Tests use it with in-memory stores.
func OpenRepositoryOn(ctx context.Context, st chunkstore.Store, opts RepoOptions) (*chunkstore.Repository, error) {
	var s chunkstore.Store = st
	if !opts.NoRetry {
		s = retry.New(s, opts.Retry)
	}
	if opts.WriteBytesPerSec > 0 || opts.ReadBytesPerSec > 0 {
		s = ratelimit.New(s, opts.WriteBytesPerSec, opts.ReadBytesPerSec)
	}
	var repo *chunkstore.Repository
	var err error
	switch opts.Create {
	case OpenExisting:
		repo, err = chunkstore.OpenWithKey(ctx, s, opts.Passphrase)
	case CreateIfMissing:
		repo, err = chunkstore.OpenOrInit(ctx, s, opts.Init, opts.Passphrase)
	case CreateNew:
		repo, err = chunkstore.Init(ctx, s, opts.Init)
	default:
		err = errors.New("target: unknown create mode")
	}
	return repo, err
}
