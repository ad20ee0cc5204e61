package qemu

import (
	"context"
	"sync"

	"github.com/volback/volback/dataplane/qmp"
)

// A QMP socket serves one client at a time: a second connection waits
// until the first is closed. So operations on one QEMU in this process
// (backups of two of its disks to two storages, a revert beside them)
// share one connection, which is safe for concurrent use, and it closes
// when the last of them is done.
var conns = struct {
	sync.Mutex
	m map[string]*sharedConn
}{m: map[string]*sharedConn{}}

type sharedConn struct {
	c    *qmp.Client
	refs int
}

// acquire returns the process's connection to src's QMP socket, dialling
// it if there is none (or it died), and the function that gives it back.
func acquire(ctx context.Context, src Source) (*qmp.Client, func(), error) {
	conns.Lock()
	defer conns.Unlock()
	if s := conns.m[src.QMP]; s != nil {
		select {
		case <-s.c.Done():
			// Dead: whoever still holds it sees its error; start afresh.
			delete(conns.m, src.QMP)
		default:
			s.refs++
			return s.c, release(src.QMP, s), nil
		}
	}
	c, err := qmp.Dial(ctx, src.QMP, src.who())
	if err != nil {
		return nil, nil, err
	}
	s := &sharedConn{c: c, refs: 1}
	conns.m[src.QMP] = s
	return c, release(src.QMP, s), nil
}

func release(path string, s *sharedConn) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			conns.Lock()
			s.refs--
			last := s.refs == 0
			if last && conns.m[path] == s {
				delete(conns.m, path)
			}
			conns.Unlock()
			if last {
				s.c.Close()
			}
		})
	}
}
