// Package nbd speaks the Network Block Device protocol (doc/proto.md of the
// NetworkBlockDevice project) as a server.
//
// This file set holds the transmission-phase wire format: the 28-byte
// request header, simple and structured reply headers, command types,
// command flags and error numbers. Constants that
// github.com/pojntfx/go-nbd's protocol package defines are taken from it,
// so both stay in step; the rest of the protocol (structured replies,
// meta contexts, the newer commands) is defined here.
//
// Parsing is strict about what the protocol calls a MUST (the request
// magic) and lenient about everything else: a request with an unknown
// command or unknown flags parses fine, and it is the server's job to
// answer it with an error reply rather than drop the connection.
package nbd
