package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/volback/volback/chunkstore"
)

// passphraseOf reads an encrypted repository's passphrase, as restic does:
// --password-file FILE, else VOLBACK_PASSWORD, else a prompt on the
// terminal. It reads once, and only when a repository turns out to be
// encrypted.
func passphraseOf(c *cli.Context, prompt string) chunkstore.PassphraseFunc {
	var once sync.Once
	var pass []byte
	var err error
	return func() ([]byte, error) {
		once.Do(func() {
			if pass, err = readPassphrase(stringFlag(c, "password-file"), "VOLBACK_PASSWORD", prompt, false); err != nil {
				err = fmt.Errorf("the repository is encrypted: %w", err)
			}
		})
		return pass, err
	}
}

// readPassphrase reads a passphrase from file, else the environment
// variable env, else the terminal (twice when confirm is set, as a new
// passphrase is).
func readPassphrase(file, env, prompt string, confirm bool) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		// One trailing newline is the file's, not the passphrase's.
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) == 0 {
			return nil, fmt.Errorf("passphrase file %s is empty", file)
		}
		return b, nil
	}
	if p := os.Getenv(env); p != "" {
		return []byte(p), nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("no passphrase given (--password-file FILE or %s) and no terminal to ask on", env)
	}
	fmt.Fprintf(os.Stderr, "%s: ", prompt)
	p, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	if len(p) == 0 {
		return nil, errors.New("empty passphrase")
	}
	if confirm {
		fmt.Fprintf(os.Stderr, "again: ")
		q, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return nil, fmt.Errorf("read passphrase: %w", err)
		}
		if !bytes.Equal(p, q) {
			return nil, errors.New("the passphrases differ")
		}
	}
	return p, nil
}
