// Package control is volback's control plane: the daemon (RunDaemon), its
// ZStack-compatible REST API (/zstack/v1/...: sessions, async jobs, backup
// storages, volumes, volume backups) and the admin socket of live backups.
//
// Every API handler has one of two shapes (see api.go): a synchronous
// handler returns the reply or an error; an asynchronous one checks the
// request and returns the job to run. API.serve, the one wrapper, does
// authentication, body decoding, the job headers, the 202 and its
// location, and turns errors into ZStack's answers (errors.go): an
// *ErrorCode is 503 with ZStack's body, a badRequest is 400 plain text,
// anything else SYS.1000. Handlers live by resource: sessions_api.go,
// storages_api.go, volumes_api.go, backups_api.go, restore_api.go (revert
// and live restore), sync_api.go, gc_api.go, usertags_api.go,
// copies_api.go, vm_api.go, verify_api.go (VerifyVolumeBackup and the
// scheduled verification); query.go parses ZStack's query parameters,
// which package inventory alone turns into SQL.
//
// What survives a crash: recover.go settles at start the backups the last
// run left Creating (a durable manifest makes the backup Ready and its job
// succeed); rebuild.go refuses an empty inventory over live state, keeps
// consistent copies of the inventory and rebuilds it (--rebuild-inventory).
//
// host.go is the registry of served volumes; volume_flags.go the rule for
// volume ids; targets.go where a backup goes and how its chain is named;
// systemtags.go parses the system tags CreateVolumeBackup and backup
// storages carry (fsInfo, volumeLiveBackup::parallelismDegree,
// backup::network::cidr), strictly: an unknown tag or a malformed value is
// an error that names the tag (SYS.1007), so a typo never falls back to a
// default.
//
// Concurrency: handlers run concurrently; Jobs runs each async job in its
// own goroutine under the daemon's lifetime (cancelled at shutdown, and
// recorded as failed); Host and the admin API guard their maps with
// mutexes; the inventory is safe for concurrent use.
package control
