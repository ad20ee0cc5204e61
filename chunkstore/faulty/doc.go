// Package faulty wraps a chunkstore.Store and injects errors, for fault
// tests: a target that fails after a number of writes, or whose reads fail.
package faulty
