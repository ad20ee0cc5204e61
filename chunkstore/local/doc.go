// Package local is the ImageStore driver: a chunkstore.Store in a directory
// of the local filesystem.
//
// Each object is one file at root/<name>. A Put writes a hidden temporary
// file beside its final path and records it as pending; it does not wait for
// the disk and does not rename. Sync fdatasyncs every pending file (in
// parallel, so the device sees a deep queue), renames each to its final
// name, then fsyncs every directory that gained an entry. So a file under a
// final name is always complete and on disk: a crash or power loss at any
// point leaves at most some temporary files, which List ignores and
// RemoveStale deletes. This gives the guarantee of fsync-before-rename per
// object with one barrier per backup instead of thousands.
//
// Reads see pending objects (read-your-writes) through the pending table.
// Several processes may share a directory: renames are atomic and objects
// are immutable, so concurrent writers of one name are harmless.
package local
