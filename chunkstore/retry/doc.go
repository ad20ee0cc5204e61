// Package retry wraps a chunkstore.Store so that transient errors (a
// dropped connection, throttling, a server restarting) are retried with
// exponential backoff and full jitter, while permanent ones (not found,
// no space, permission, a corrupt object) fail at once. Each driver
// decides which of its errors are transient (chunkstore.Transient); this
// wrapper is the one place that acts on it, so callers never guess.
//
// Retrying is safe because Put is idempotent. Two calls need care: a List
// that has already handed entries to its callback is not retried (the
// callback would see them twice), and a PutIfAbsent retried after a
// transient failure that finds the name taken reads the object back: if it
// holds exactly the bytes written, the earlier attempt created it and the
// call succeeds.
package retry
