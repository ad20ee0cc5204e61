package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Agent is a client of a QEMU guest agent (qemu-ga) on the host side of
// its channel (a Unix socket chardev). The protocol is QMP's JSON without
// a greeting; a channel may hold a half-read answer of an earlier client,
// so Dial first synchronises with guest-sync and a random id.
type Agent struct {
	Name string
	conn net.Conn
	r    *bufio.Reader
	mu   sync.Mutex
}

// DialAgent connects to the guest agent's socket at path and synchronises.
func DialAgent(ctx context.Context, path, name string) (*Agent, error) {
	if name == "" {
		name = "guest agent at " + path
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	a := &Agent{Name: name, conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	id := rand.Int64N(1 << 40)
	var got int64
	if err := a.Execute(sctx, "guest-sync", map[string]any{"id": id}, &got); err != nil {
		conn.Close()
		return nil, err
	}
	if got != id {
		conn.Close()
		return nil, fmt.Errorf("%s: guest-sync answered %d, not %d", name, got, id)
	}
	return a, nil
}

// Execute runs a guest agent command; the wait is bounded by ctx (a guest
// that hangs must not hang the backup).
func (a *Agent) Execute(ctx context.Context, cmd string, args any, result any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	_ = a.conn.SetDeadline(dl)
	defer a.conn.SetDeadline(time.Time{})
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s: %s: %w", a.Name, cmd, err)
	}
	for {
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("%s: %s: no answer: %w", a.Name, cmd, err)
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue // a stale half message, or a resync byte
		}
		if m.Error != nil {
			return &Error{Who: a.Name, Command: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if m.Return == nil {
			continue
		}
		if cmd == "guest-sync" {
			// Answers to earlier syncs may still come: only ours counts.
			var got int64
			if json.Unmarshal(m.Return, &got) == nil && args != nil {
				if want, ok := args.(map[string]any)["id"].(int64); ok && got != want {
					continue
				}
			}
		}
		if result != nil {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("%s: %s: unexpected answer %.120q: %w", a.Name, cmd, m.Return, err)
			}
		}
		return nil
	}
}

// Close ends the connection.
func (a *Agent) Close() error { return a.conn.Close() }
