// Package storetest is the conformance suite that every chunkstore.Store
// driver must pass. A driver's test calls Run with a Factory that returns a
// fresh, empty store; drivers whose tests need a server start it themselves
// or skip with the reason.
package storetest
