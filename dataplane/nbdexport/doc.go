// Package nbdexport serves dataplane's volumes and backup images over NBD:
// small adapters that implement nbd.Backend on top of protocol-free cores,
// the way go-fuse keeps its protocol in adapter nodes. A live volume's
// changed-block maps appear as qemu:dirty-bitmap:<chain> metadata
// contexts, its holes as base:allocation; a backup image is read-only,
// with its zero chunks as holes.
package nbdexport
