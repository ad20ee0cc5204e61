// Package nfs is a chunkstore.Store in a directory of an NFSv3 export,
// spoken from user space, so the daemon needs no kernel NFS client and
// mounts nothing.
//
// Options are the kernel's mount options (ParseOptions): vers=3 only;
// rsize and wsize bound each READ and WRITE; port and mountport name the
// services' ports (else the portmapper is asked); timeo and retrans bound
// how long a call waits and how often it is sent before it fails, always
// (a backup must fail, not hang); nconnect is the number of TCP
// connections the workers share. Options that need no action (nolock,
// hard, noatime...) are accepted; unknown ones are refused by name.
//
// Objects are written as a temporary file with unstable writes in flight
// together, committed (write verifiers checked, so a server restart in
// between is noticed and the object rewritten stably), then renamed over
// the final name: readers never see part of an object, and since NFSv3
// servers commit a RENAME before answering it an object is durable when
// Put returns, so Sync has nothing to add. Errors name
// the server and path; broken connections and timeouts are transient and
// the client reconnects by itself.
//
// The protocol client is github.com/willscott/go-nfs-client with local
// patches (source address, timeouts, known ports), in ./gonfs.
package nfs
