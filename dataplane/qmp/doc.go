// Package qmp is a client of the QEMU Machine Protocol: it connects to the
// QMP socket of a running QEMU or qemu-storage-daemon, negotiates
// capabilities, runs commands (several may be in flight, each matched to
// its answer by id) and delivers asynchronous events to subscribers.
//
// Errors name the process they came from (Client.Name) and keep QEMU's
// error class, so a caller can tell "no such node" from "the command does
// not exist in this QEMU".
package qmp
