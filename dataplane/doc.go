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
// # Live volumes
//
// A Volume is a raw file or block device served over NBD (package nbdexport
// adapts it). Every write, trim and zero marks one DirtyMap per backup
// chain (64 KiB granularity, lock-free atomic ORs). The maps are saved on
// Close with an in-use flag cleared; the flag is set again when the volume
// opens and after every backup, so a crash leaves it set and the next start
// distrusts every map: the next backup of each chain reads everything (and
// says why in the manifest's meta "fullReason").
//
// Volume.Backup takes a live, crash-consistent backup: it takes the volume's
// write gate exclusively (in-flight writes drain, new ones wait), swaps the
// chain's map for an empty one, plans the chunks to read and installs a
// copy-before-write snapshot over exactly those chunks, then releases the
// gate: writes are held off for microseconds. A write that then lands in a
// chunk the backup has not read saves the old content of the blocks it
// covers first (see snapshot.go); the backup lays those blocks over what it
// reads. On failure or cancellation the frozen map is merged back. Backup
// workers run at a lowered CPU and I/O priority, so guest I/O comes first.
//
// # Restore
//
// Restore writes a manifest back to a regular file (through a temporary
// file renamed into place, so a failed restore never leaves wrong data
// under the target's name) or to a block device. Zero chunks become holes
// in files. Workers fetch, check and write chunks in parallel, and a final
// pass re-reads the target and compares every chunk with its key.
//
// # Backups as disks
//
// Image presents a backup as a read-only disk of the volume's size without
// restoring it: a chunk is fetched and checked when first read and kept in
// a bounded LRU cache; a reader that moves forward gets the next chunks
// fetched in the background; zero chunks cost nothing. nbdexport.Image serves
// it over NBD (zero chunks as holes), package fusefs as files.
//
// # Revert and live restore
//
// Volume.Revert hashes each chunk of the live volume and writes back only
// those whose key differs from the backup's, through the volume (running
// backups keep their point in time); every chain's map is then distrusted,
// since it no longer describes changes since its last backup.
//
// A volume created from a backup is usable at once (StartRestore): any
// I/O that touches a chunk not yet copied copies it first, so clients read
// exactly the backup and write on top of it, while RunRestore copies the
// rest in the background, retrying while the repository is unreachable. A
// state file records the chunks done, written only after their data is
// synced (at every client flush and every second), so a restart resumes
// (ResumeRestore) and can only undo writes a client never flushed.
package dataplane
