// Package control is volback's control plane, compatible with ZStack's REST
// API (/zstack/v1/...): sessions, async jobs, backup storages, volumes and
// volume backups, and the inventory that records them.
//
// query.go parses ZStack's query parameters (q= conditions with = != > <
// >= <= ?= !?= ~= !~= "is null" "not null", limit, start, count,
// replyWithCount, sort, fields) and renders them as SQL against a schema
// that whitelists each resource's fields; values are always bound
// arguments. serve.go and local.go run `volback serve` and its local admin
// socket.
//
// systemtags.go parses the system tags that CreateVolumeBackup and backup
// storages carry (fsInfo, volumeLiveBackup::parallelismDegree,
// backup::network::cidr). Parsing is strict: an unknown tag or a malformed
// value is an error that names the tag, which the API turns into SYS.1007,
// so that a typo never silently falls back to a default.
package control
