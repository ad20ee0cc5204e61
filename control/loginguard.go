package control

import (
	"net"
	"sync"
	"time"
)

// loginGuard throttles password guessing: after a few failed logins from
// one source address, or against one account from anywhere, logins from
// there (to there) are refused unchecked for a time that doubles with
// every further failure, up to a ceiling. Refused attempts do not extend
// the wait, so an attacker cannot keep an account locked by hammering it
// faster, and a source that logged in lately is not held by the
// account's throttle; a success clears the record.
type loginGuard struct {
	mu       sync.Mutex
	now      func() time.Time
	bySource map[string]*failures
	byAcct   map[string]*failures
	// known are sources that logged in lately: an account's throttle
	// (which anyone can trigger) does not lock them out.
	known map[string]time.Time
}

type failures struct {
	n     int
	until time.Time // refused before this
	last  time.Time
}

// Throttling costs: the free failures per source and per account, the
// first wait and its ceiling.
const (
	sourceFree   = 5
	accountFree  = 20
	firstBackoff = time.Second
	maxBackoff   = time.Minute
	// guardEntries bounds the records kept; beyond it, idle ones go.
	guardEntries = 4096
	guardIdle    = 15 * time.Minute
	knownFor     = 24 * time.Hour
)

func newLoginGuard(now func() time.Time) *loginGuard {
	if now == nil {
		now = time.Now
	}
	return &loginGuard{now: now, bySource: map[string]*failures{}, byAcct: map[string]*failures{}, known: map[string]time.Time{}}
}

// sourceOf is the address a request came from, without its port (a
// client reconnecting gets a new port, not a new allowance).
func sourceOf(remoteAddr string) string {
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return h
	}
	return remoteAddr
}

// wait says how long logins from source to account are refused; zero
// means the password may be checked.
func (g *loginGuard) wait(source, account string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	var w time.Duration
	held := []*failures{g.bySource[source]}
	if t, ok := g.known[source]; !ok || now.Sub(t) > knownFor {
		held = append(held, g.byAcct[account])
	}
	for _, f := range held {
		if f != nil && f.until.After(now) && f.until.Sub(now) > w {
			w = f.until.Sub(now)
		}
	}
	return w
}

// failed records a wrong password.
func (g *loginGuard) failed(source, account string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.bump(g.bySource, source, sourceFree, now)
	g.bump(g.byAcct, account, accountFree, now)
}

func (g *loginGuard) bump(m map[string]*failures, key string, free int, now time.Time) {
	if len(m) >= guardEntries {
		for k, f := range m {
			if now.Sub(f.last) > guardIdle {
				delete(m, k)
			}
		}
	}
	f := m[key]
	if f == nil {
		if len(m) >= guardEntries {
			return // full of recent failures: the account's own record still counts
		}
		f = &failures{}
		m[key] = f
	}
	if now.Sub(f.last) > guardIdle {
		f.n = 0 // an old streak is forgiven
	}
	f.n++
	f.last = now
	if f.n >= free {
		d := firstBackoff << min(f.n-free, 10)
		f.until = now.Add(min(d, maxBackoff))
	}
}

// succeeded clears the records of a correct login.
func (g *loginGuard) succeeded(source, account string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.bySource, source)
	delete(g.byAcct, account)
	now := g.now()
	if len(g.known) >= guardEntries {
		for k, t := range g.known {
			if now.Sub(t) > knownFor {
				delete(g.known, k)
			}
		}
	}
	if len(g.known) < guardEntries {
		g.known[source] = now
	}
}
