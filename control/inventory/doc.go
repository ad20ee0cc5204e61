// Package inventory is the daemon's record of accounts, sessions, backup
// storages, volumes, volume backups and async jobs, in an embedded SQLite
// database (modernc.org/sqlite: pure Go, no cgo) in WAL mode.
//
// The schema is versioned: Open applies every migration newer than the
// database's version, each in its own transaction, so a daemon can be
// upgraded in place and a half-applied migration never survives a crash.
// Times are stored as Unix nanoseconds (UTC) and injected through a clock,
// never read with time.Now inside logic, so expiry is testable.
//
// All of the daemon's SQL is here. ZStack queries arrive as a typed Query
// (conditions, page, sort) and DB.Query renders them against a schema that
// whitelists each resource's fields, with every value a bound argument;
// no SQL text crosses the package boundary. States, statuses, volume types
// and job states are typed constants (types.go).
//
// A restarted daemon calls FailRunningJobs: a job that was running when the
// process died is recorded as failed with a clear error, never left
// running forever.
package inventory
