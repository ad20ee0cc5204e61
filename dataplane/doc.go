// Package dataplane moves volume data in and out of a chunk repository.
//
// # Backup
//
// Backup cuts a volume into the repository's fixed-size chunks, aligned to
// their offsets, and runs them through a bounded pipeline: one producer
// hands chunk indexes to N workers (N = parallelismDegree) over a channel of
// capacity N; each worker owns one chunk-sized read buffer and reads,
// detects all-zero chunks, computes the key, skips chunks the repository
// already holds, compresses and puts the rest. Memory is therefore
// O(N x chunk size) whatever the volume's size. Workers write their result
// into their own slot of the manifest's key slice, so they share no locks.
// The first error cancels every other worker (errgroup). Only after all
// chunks are put does SaveManifest sync the store and write the manifest.
//
// An incremental backup takes a parent manifest and the volume's changed
// extents: chunks no extent touches keep the parent's key without being
// read. Every manifest lists every chunk, so each backup restores alone.
//
// # Restore
//
// Restore writes a manifest back to a regular file (through a temporary
// file renamed into place, so a failed restore never leaves wrong data
// under the target's name) or to a block device. Zero chunks become holes
// in files. Workers fetch, check and write chunks in parallel, and a final
// pass re-reads the target and compares every chunk with its key.
package dataplane
