// Package peer starts the real S3 engines that volback's tests and
// benchmarks talk to, on loopback ports of their own: versitygw (one
// process over a directory) and a SeaweedFS cluster (one master, several
// volume servers with replication, a filer and the S3 gateway, each a
// separate process). Every process is killed when its owner closes it, or
// when the process that started it dies.
package peer
