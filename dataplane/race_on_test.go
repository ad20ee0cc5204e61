//go:build race

package dataplane_test

// raceDetector is whether the tests run under the race detector, where
// sync.Pool drops a share of what is put back on purpose, so pooled
// buffers are allocated again now and then.
const raceDetector = true
