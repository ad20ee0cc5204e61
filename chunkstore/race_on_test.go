//go:build race

package chunkstore_test

// raceDetector is whether the tests run under the race detector, where
// sync.Pool drops a share of what is put back on purpose, so pooled
// scratch buffers are allocated again now and then.
const raceDetector = true
