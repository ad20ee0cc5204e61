// Package mem is an in-memory chunkstore.Store: a fast extra backend for
// tests and benchmarks, never the only one a feature is tested on. Objects
// are copied in and out, so callers may reuse their buffers. Sync is a no-op
// (memory is as durable as it gets here).
package mem
