// Package control is volback's control plane, compatible with ZStack's REST
// API (/zstack/v1/...): sessions, async jobs, backup storages, volumes and
// volume backups, and the inventory that records them.
//
// systemtags.go parses the system tags that CreateVolumeBackup and backup
// storages carry (fsInfo, volumeLiveBackup::parallelismDegree,
// backup::network::cidr). Parsing is strict: an unknown tag or a malformed
// value is an error that names the tag, which the API turns into SYS.1007,
// so that a typo never silently falls back to a default.
package control
