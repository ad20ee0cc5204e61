package dataplane

import "sync/atomic"

// Progress counts bytes processed by a long operation. It is safe for
// concurrent use; a UI polls it while the operation runs.
type Progress struct {
	done  atomic.Int64
	total atomic.Int64
}

// Add records n more bytes done. A nil Progress ignores it.
func (p *Progress) Add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// SetTotal sets the number of bytes the operation will process.
func (p *Progress) SetTotal(n int64) {
	if p != nil {
		p.total.Store(n)
	}
}

// Done returns the bytes processed so far.
func (p *Progress) Done() int64 {
	if p == nil {
		return 0
	}
	return p.done.Load()
}

// Total returns the bytes the operation will process.
func (p *Progress) Total() int64 {
	if p == nil {
		return 0
	}
	return p.total.Load()
}
