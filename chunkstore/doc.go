// Package chunkstore is volback's content-addressed backup repository.
//
// A repository lives on a Store: a flat namespace of named objects with an
// idempotent, atomic Put. Drivers live in sub-packages (local for the
// ImageStore directory, mem for tests and benchmarks; NFS and S3 follow the
// same contract) and every driver must pass the conformance suite in
// chunkstore/storetest.
//
// # Objects
//
//	config                      repository config, written once by Init
//	chunks/<kk>/<key>           one encoded chunk; <kk> = first two hex digits
//	manifests/<backup-id>       one backup's manifest, written last
//	locks/backup-<id>, gc-<id>  markers of backups and collections running
//
// # Garbage collection
//
// GC marks every key a manifest names and deletes the other chunks.
// Backups and collections, in any process on any host, exclude each other
// through markers: each side writes its own before looking for the other
// kind, so the later one always sees the earlier (see gc.go and
// docs/FORMAT.md). Markers carry heartbeats, so a dead holder blocks
// nobody for long.
//
// # Keys and the threat model
//
// A chunk's key is 128 bits: XXH3-128 of its content under a random 64-bit
// seed kept in the config (format 3), or xxhash64 under two such seeds
// (format 1, which older builds read). Neither is a cryptographic hash.
// They are chosen because they run at memory speed, and the random seeds
// make it impractical for someone who does not know the config to build
// colliding chunks. The
// model is: the repository's writers are trusted (they can already write
// any data they like), and the key guards against accidental collisions
// (2^-128 per pair) and against corruption at rest, which every read detects
// by hashing the decoded content and comparing it with the key it was asked
// for. It does not defend against an attacker who can read the config and
// also write data into volumes that are backed up; deployments that need
// that should keep the repository's config private, as they keep its
// credentials, or encrypt the repository.
//
// # Encrypted repositories
//
// Format 2 (crypt.go) seals chunks and manifests with AES-256-GCM and names
// chunks by keyed BLAKE3 (a MAC: names of known content cannot be computed,
// and no one, key holders included, can build two contents of one name).
// The keys derive from a random master key that is stored only wrapped,
// under argon2id of each passphrase, in key slots (keys/<id>). See
// docs/FORMAT.md for the layout and docs/SECURITY.md for what it defends.
//
// # Durability
//
// Chunks are put without waiting for the disk. Store.Sync is the barrier:
// once it returns, every object put before it is durable. SaveManifest calls
// Sync before it writes the manifest and again after, so a manifest is never
// visible before every chunk it names, and a backup is never reported done
// before its manifest is durable.
//
// # Concurrency
//
// A Repository is safe for concurrent use by many goroutines, and several
// processes or hosts may write into one repository at once: chunk puts are
// idempotent and manifests have unique names.
package chunkstore
