// Package fusefs mounts a repository's backups as a read-only FUSE file
// system, so a backup can be inspected in seconds without restoring it:
//
//	MOUNTPOINT/
//	  <volume-uuid>/<backup-uuid>.raw   one raw image per backup, of the
//	                                     volume's exact size
//	  by-name/<name>.raw                 symlinks to them by backup name
//	                                     (<name>.<uuid8>.raw when names repeat)
//
// The tree is built from the manifests when the mount starts. An image's
// chunks are fetched only when read (dataplane.Image: bounded cache,
// read-ahead for sequential readers, zero chunks cost nothing). Files are
// opened for direct I/O by default, so a read's bytes go straight to the
// reader (faster first reads; a loop device on an image still caches in
// its own block device); Options.KernelCache lets the kernel keep pages
// instead, since a backup never changes. A chunk that fails its check is an EIO for that read, logged
// with the backup and offset, never wrong data.
//
// Serve the file system and use it from different processes: a process
// that reads its own FUSE mount can deadlock with itself.
package fusefs
