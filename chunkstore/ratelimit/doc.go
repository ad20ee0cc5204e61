// Package ratelimit wraps a chunkstore.Store so the bytes it writes and
// reads per second stay under set limits (networkWriteBandwidth and
// networkReadBandwidth), shared by every goroutine that uses the store.
package ratelimit
