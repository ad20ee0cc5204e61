// Package qemu backs up disks of running QEMU processes (VMs and
// qemu-storage-daemon), where they already run, through QMP: QEMU keeps
// the point in time and the changed blocks (persistent dirty bitmaps on
// qcow2), and its own backup job sends the data.
//
// The shape is push: in one QMP transaction volback adds the chain's next
// bitmap and starts blockdev-backup (sync=full, or sync=bitmap with the
// previous bitmap and bitmap-mode=never) into an NBD node whose server is
// volback, on a socket pair handed to QEMU with getfd. So QEMU's own NBD
// server, which a VM may already run for migration or another tool, is
// neither needed nor touched, and no file system permission stands
// between the two processes. The job's copy-before-write keeps the
// instant while the guest writes on. What QEMU sends is staged (a private
// sparse file, zeros as extents), then cut into chunks by the same
// pipeline as every backup (dataplane.Backup, parallelismDegree workers,
// dedup, any target), taking the rest from the parent backup.
//
// The previous bitmap is removed only after the manifest is durable; on
// any failure or cancel the new bitmap goes, the previous one still holds
// every change since its backup, and the job, the NBD node and the staging
// file are always removed.
package qemu
