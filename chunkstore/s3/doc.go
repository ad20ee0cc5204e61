// Package s3 is a chunkstore.Store on an S3 bucket prefix, through
// aws-sdk-go-v2: AWS or any S3-compatible service (endpoint and
// path-style addressing), credentials from the standard chain, a named
// profile or the caller, never from a URL or tag.
//
// A PUT is durable when acknowledged, so Sync only checks the context.
// Requests that are throttled, answered with a 5xx or lose their
// connection are retried with jittered exponential backoff (no client-side
// retry budget: a long backup rides out a throttling storm); other 4xx
// answers fail at once, as permanent errors. PutIfAbsent is a conditional
// create (If-None-Match: *), which lets writers racing on an empty prefix
// agree on one repository config. Connections may be bound to a source
// address (the backup network).
package s3
