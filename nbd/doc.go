// Package nbd is volback's Network Block Device server, written to the
// protocol (doc/proto.md of the NetworkBlockDevice project) and serving any
// Backend.
//
// # Negotiation
//
// Fixed newstyle only, with NO_ZEROES. Options: EXPORT_NAME, ABORT, LIST,
// INFO and GO (NBD_INFO_EXPORT, NAME, DESCRIPTION and always BLOCK_SIZE:
// minimum 1, preferred 64 KiB, maximum 32 MiB), STRUCTURED_REPLY,
// LIST_META_CONTEXT and SET_META_CONTEXT, and STARTTLS on TCP when the
// server has a TLSConfig: TLS is then required, as qemu-nbd's --tls-creds
// does (anything but STARTTLS and ABORT gets ERR_TLS_REQD, EXPORT_NAME is
// hung up on), and what was agreed before the handshake is forgotten. Unix
// socket connections are never offered TLS. Anything else, extended
// headers included, gets ERR_UNSUP and negotiation goes on. Option data is
// bounded; malformed options get ERR_INVALID. A client has
// NegotiationTimeout (30 s) to negotiate, TLS included, and at most
// MaxConnections (1,024) connections are open at once.
//
// # Transmission
//
// One goroutine reads requests. A small read or write that arrives alone
// (queue depth 1) runs on that goroutine; the rest run on the
// connection's workers, at most maxInFlight, started as needed and kept
// for the connection's life, so replies leave in completion order, not
// request order. A write's payload is read before anything else happens,
// so a refused write never desynchronises the stream. The goroutine that
// finishes a request writes its reply, with every other reply waiting,
// in one vectored write, unless another is writing already, which then
// takes it along: no hand-offs at depth 1, few system calls under a deep
// queue. Reads of 64 KiB or more from a backend that lies in a file
// (FileReader) go from the page cache to the socket by sendfile, one copy
// instead of two; on TLS connections they are copied. Writes of 64 KiB
// or more to such a backend (FileWriter) go the other way, socket to pipe
// to file by splice, on the reading goroutine. The payload
// bytes a connection holds are bounded (connBudget), so a client that
// pipelines deeply cannot exhaust memory.
//
// Errors are replies, never disconnects: EINVAL for reads, trims and
// block-status queries out of range and for flags a command does not take,
// ENOSPC for writes and zeroes past the end, EPERM on read-only exports,
// EOVERFLOW for requests over 32 MiB (an oversized write's payload is read
// and discarded), ENOTSUP for a fast zero the backend cannot do fast, EIO
// for backend failures. Only a broken MUST, a request without the request
// magic, drops the connection.
//
// CAN_MULTI_CONN is advertised: every connection to an export shares its
// Backend, whose Flush covers writes completed on any connection.
//
// # Metadata contexts
//
// The Backend names its contexts; volback's volumes offer base:allocation
// (holes from SEEK_HOLE/SEEK_DATA) and qemu:dirty-bitmap:<chain> (bit 0 =
// changed since the chain's last backup), the form QEMU, libnbd and
// oVirt's tools read.
//
// Constants that github.com/pojntfx/go-nbd's protocol package defines are
// taken from it.
package nbd
