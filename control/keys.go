package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
)

// Keys of encrypted repositories live in files of the daemon's key
// directory (<state-dir>/keys/NAME, mode 0600): the API and the system
// tags only ever name them, so no key passes through a request body, a
// tag, the inventory or a log line.

var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func validKeyName(name string) error {
	if !keyNameRE.MatchString(name) {
		return errors.New("a key name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// minKeyFile is the shortest key file accepted: a key file is a secret
// for machines, 32 random bytes (`head -c 32 /dev/urandom`) or more.
const minKeyFile = 16

// readKeyFile reads key name from dir, refusing a file others may read
// or replace: a symbolic link, not a regular file, not ours, group or
// world bits set.
func readKeyFile(dir, name string) ([]byte, error) {
	if err := validKeyName(name); err != nil {
		return nil, fmt.Errorf("key %q: %w", name, err)
	}
	if dir == "" {
		return nil, fmt.Errorf("key %s: this daemon has no key directory", name)
	}
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, fmt.Errorf("key %s: no key file %s (write it with mode 0600)", name, p)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key %s: %s is not a regular file", name, p)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key %s: %s has mode %04o, others may read it (chmod 600)", name, p, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("key %s: %s belongs to uid %d, not to this daemon", name, p, st.Uid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", name, err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) < minKeyFile {
		return nil, fmt.Errorf("key %s: %s holds %d bytes, at least %d are needed", name, p, len(b), minKeyFile)
	}
	return b, nil
}

// withKey gives opts the key spec names, if any.
func (a *API) withKey(spec target.Spec, opts target.RepoOptions) (target.RepoOptions, error) {
	if spec.Key == "" {
		return opts, nil
	}
	k, err := readKeyFile(a.KeyDir, spec.Key)
	if err != nil {
		return opts, err
	}
	opts.Passphrase = func() ([]byte, error) { return k, nil }
	if opts.Create != target.OpenExisting {
		opts.Init.Passphrase = k
	}
	return opts, nil
}

// openRepo opens spec's repository with its key, through the test hook
// if one is set.
func (a *API) openRepo(ctx context.Context, spec target.Spec, env target.Env, opts target.RepoOptions) (*chunkstore.Repository, error) {
	opts, err := a.withKey(spec, opts)
	if err != nil {
		return nil, err
	}
	var repo *chunkstore.Repository
	if a.Open != nil {
		repo, err = a.Open(ctx, spec, env, opts)
	} else {
		repo, err = target.OpenRepository(ctx, spec, env, opts)
	}
	if errors.Is(err, chunkstore.ErrLocked) {
		return nil, fmt.Errorf("%w; a daemon opens it with system tag %sNAME and the key in %s", err, keyPrefix, filepath.Join(a.KeyDir, "NAME"))
	}
	return repo, err
}
