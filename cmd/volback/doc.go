// Command volback is the command line of the volback backup daemon: it
// binds flags to the packages that do the work (chunkstore, dataplane,
// nbd, control, bench) and prints their results, with progress bars on a
// terminal and JSON with --json. Run `volback help` for the commands.
package main
