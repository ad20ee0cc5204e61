package inventory

import (
	"context"
	"crypto/sha512"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// DB is the inventory database. It is safe for concurrent use.
type DB struct {
	db  *sql.DB
	now func() time.Time
}

// migrations are applied in order; never edit one that has shipped, add a
// new one.
var migrations = []string{
	// 1: the first schema.
	`CREATE TABLE accounts (
		uuid TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		password_sha512 TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL
	);
	CREATE TABLE sessions (
		uuid TEXT PRIMARY KEY,
		account_uuid TEXT NOT NULL REFERENCES accounts(uuid) ON DELETE CASCADE,
		user_uuid TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		expired_date INTEGER NOT NULL
	);
	CREATE INDEX sessions_expiry ON sessions(expired_date);
	CREATE TABLE backup_storages (
		uuid TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		type TEXT NOT NULL,
		url TEXT NOT NULL,
		hostname TEXT,
		username TEXT,
		system_tags TEXT NOT NULL DEFAULT '[]',
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL
	);
	CREATE TABLE volumes (
		uuid TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		path TEXT NOT NULL,
		size INTEGER NOT NULL,
		type TEXT NOT NULL,
		state TEXT NOT NULL,
		status TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL
	);
	CREATE TABLE volume_backups (
		uuid TEXT PRIMARY KEY,
		volume_uuid TEXT NOT NULL,
		name TEXT NOT NULL,
		description TEXT,
		type TEXT NOT NULL,
		state TEXT NOT NULL,
		status TEXT NOT NULL,
		size INTEGER NOT NULL,
		metadata TEXT,
		mode TEXT NOT NULL,
		user_tags TEXT NOT NULL DEFAULT '[]',
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL
	);
	CREATE INDEX volume_backups_volume ON volume_backups(volume_uuid);
	CREATE TABLE volume_backup_refs (
		volume_backup_uuid TEXT NOT NULL REFERENCES volume_backups(uuid) ON DELETE CASCADE,
		backup_storage_uuid TEXT NOT NULL,
		install_path TEXT NOT NULL,
		status TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL,
		PRIMARY KEY (volume_backup_uuid, backup_storage_uuid)
	);
	CREATE TABLE jobs (
		uuid TEXT PRIMARY KEY,
		api TEXT NOT NULL,
		state TEXT NOT NULL,
		result TEXT,
		error TEXT,
		progress_done INTEGER NOT NULL DEFAULT 0,
		progress_total INTEGER NOT NULL DEFAULT 0,
		webhook TEXT,
		create_date INTEGER NOT NULL,
		finish_date INTEGER
	);`,
	// 2: user tags as their own resources (ZStack's QueryUserTag), and the
	// target a backup was written to when it is not its storage's url.
	`CREATE TABLE user_tags (
		uuid TEXT PRIMARY KEY,
		resource_uuid TEXT NOT NULL,
		resource_type TEXT NOT NULL,
		tag TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		last_op_date INTEGER NOT NULL
	);
	CREATE INDEX user_tags_resource ON user_tags(resource_uuid);
	INSERT INTO user_tags(uuid, resource_uuid, resource_type, tag, create_date, last_op_date)
		SELECT lower(hex(randomblob(16))), b.uuid, 'VolumeBackupVO', j.value, b.create_date, b.last_op_date
		FROM volume_backups b, json_each(b.user_tags) j;
	CREATE TRIGGER volume_backups_user_tags AFTER DELETE ON volume_backups BEGIN
		DELETE FROM user_tags WHERE resource_uuid = old.uuid;
	END;
	ALTER TABLE volume_backup_refs ADD COLUMN target TEXT;`,
	// 3: every target a storage's backups were ever written to, so garbage
	// collection still visits one after its last backup is deleted.
	`CREATE TABLE storage_targets (
		storage_uuid TEXT NOT NULL REFERENCES backup_storages(uuid) ON DELETE CASCADE,
		target TEXT NOT NULL,
		create_date INTEGER NOT NULL,
		PRIMARY KEY (storage_uuid, target)
	);
	INSERT OR IGNORE INTO storage_targets(storage_uuid, target, create_date)
		SELECT DISTINCT backup_storage_uuid, target, 0 FROM volume_backup_refs
		WHERE target IS NOT NULL AND backup_storage_uuid IN (SELECT uuid FROM backup_storages);`,
	// 4: volumes belong to VMs; a VM's volume backups share a group.
	`ALTER TABLE volumes ADD COLUMN vm_instance_uuid TEXT;
	ALTER TABLE volume_backups ADD COLUMN group_uuid TEXT;
	ALTER TABLE volume_backups ADD COLUMN vm_instance_uuid TEXT;
	CREATE INDEX volume_backups_group ON volume_backups(group_uuid);`,
	// 5: a backup names the job that makes it, so a restart can finish
	// the job of a backup whose manifest became durable.
	`ALTER TABLE volume_backups ADD COLUMN job_uuid TEXT;`,
	// 6: sessions are stored by a hash of their id, so reading the
	// database yields no live session; the ones stored in the clear go
	// (their clients log in again). Passwords become argon2id hashes as
	// accounts are next set or logged into (see LogIn).
	`DELETE FROM sessions;`,
}

// Open opens (creating if needed) the database at path and migrates it.
// now is the clock; nil means time.Now.
func Open(ctx context.Context, path string, now func() time.Time) (*DB, error) {
	if now == nil {
		now = time.Now
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("inventory %s: %w", path, err)
	}
	d := &DB{db: db, now: now}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("inventory %s: %w", path, err)
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// SchemaVersion returns the number of migrations applied.
func (d *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := d.db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v)
	return v, err
}

func (d *DB) migrate(ctx context.Context) error {
	v, err := d.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this build's %d", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := d.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		// user_version is part of the transaction: a crash leaves the
		// schema and its version together, old or new.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// HashPassword returns a password's SHA-512 in hex, the form ZStack clients
// send.
func HashPassword(plain string) string {
	sum := sha512.Sum512([]byte(plain))
	return hex.EncodeToString(sum[:])
}

// EnsureAccount creates the account if missing, or sets its password. The
// column keeps only a salted argon2id hash of what clients send (the
// SHA-512 hex), never that value itself.
func (d *DB) EnsureAccount(ctx context.Context, uuid, name, sha512hex string) error {
	stored, err := hashSecret(sha512hex)
	if err != nil {
		return fmt.Errorf("account %s: %w", name, err)
	}
	now := d.now().UnixNano()
	_, err = d.db.ExecContext(ctx, `INSERT INTO accounts(uuid, name, password_sha512, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET password_sha512 = excluded.password_sha512, last_op_date = excluded.last_op_date`,
		uuid, name, stored, now, now)
	if err != nil {
		return fmt.Errorf("account %s: %w", name, err)
	}
	return nil
}

// ErrAuthFailed is returned by LogIn for an unknown account or a wrong
// password (the two are not told apart).
var ErrAuthFailed = errors.New("wrong account name or password")

// Session is a logged-in session.
type Session struct {
	UUID        string
	AccountUUID string
	UserUUID    string
	Created     time.Time
	Expires     time.Time
}

// LogIn checks the password hash and opens a session lasting ttl.
func (d *DB) LogIn(ctx context.Context, name, sha512hex, sessionUUID string, ttl time.Duration) (*Session, error) {
	var acct, stored string
	err := d.db.QueryRowContext(ctx, `SELECT uuid, password_sha512 FROM accounts WHERE name = ?`, name).Scan(&acct, &stored)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrAuthFailed
	}
	if err != nil {
		return nil, fmt.Errorf("log in %s: %w", name, err)
	}
	ok, legacy := checkSecret(stored, sha512hex)
	if !ok {
		return nil, ErrAuthFailed
	}
	if legacy { // a hash of an older build: replace it by a memory-hard one
		if h, err := hashSecret(sha512hex); err == nil {
			_, _ = d.db.ExecContext(ctx, `UPDATE accounts SET password_sha512 = ? WHERE uuid = ?`, h, acct)
		}
	}
	now := d.now().UTC()
	s := &Session{UUID: sessionUUID, AccountUUID: acct, UserUUID: acct, Created: now, Expires: now.Add(ttl)}
	if _, err := d.db.ExecContext(ctx, `INSERT INTO sessions(uuid, account_uuid, user_uuid, create_date, expired_date) VALUES(?, ?, ?, ?, ?)`,
		sessionKey(s.UUID), s.AccountUUID, s.UserUUID, s.Created.UnixNano(), s.Expires.UnixNano()); err != nil {
		return nil, fmt.Errorf("log in %s: %w", name, err)
	}
	return s, nil
}

// ValidSession returns the session if it exists and has not expired.
func (d *DB) ValidSession(ctx context.Context, uuid string) (*Session, error) {
	var s Session
	var created, expires int64
	err := d.db.QueryRowContext(ctx, `SELECT account_uuid, user_uuid, create_date, expired_date FROM sessions WHERE uuid = ?`, sessionKey(uuid)).
		Scan(&s.AccountUUID, &s.UserUUID, &created, &expires)
	s.UUID = uuid
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", uuid, err)
	}
	s.Created, s.Expires = time.Unix(0, created).UTC(), time.Unix(0, expires).UTC()
	if !d.now().Before(s.Expires) {
		return nil, ErrNotFound
	}
	return &s, nil
}

// LogOut deletes a session; deleting a missing one is not an error.
func (d *DB) LogOut(ctx context.Context, uuid string) error {
	if _, err := d.db.ExecContext(ctx, `DELETE FROM sessions WHERE uuid = ?`, sessionKey(uuid)); err != nil {
		return fmt.Errorf("session %s: %w", uuid, err)
	}
	return nil
}

// PurgeExpiredSessions deletes sessions past their expiry.
func (d *DB) PurgeExpiredSessions(ctx context.Context) (int64, error) {
	r, err := d.db.ExecContext(ctx, `DELETE FROM sessions WHERE expired_date <= ?`, d.now().UnixNano())
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// CreateJob records a new running job.
func (d *DB) CreateJob(ctx context.Context, uuid, api, webhook string) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO jobs(uuid, api, state, webhook, create_date) VALUES(?, ?, ?, ?, ?)`,
		uuid, api, JobRunning, nullIfEmpty(webhook), d.now().UnixNano())
	if err != nil {
		return fmt.Errorf("job %s: %w", uuid, err)
	}
	return nil
}

// FinishJob records a job's result (JSON) or error (JSON).
func (d *DB) FinishJob(ctx context.Context, uuid string, result, errJSON []byte) error {
	state := JobSucceeded
	if errJSON != nil {
		state = JobFailed
	}
	r, err := d.db.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, error = ?, finish_date = ? WHERE uuid = ? AND state = ?`,
		state, nullBytes(result), nullBytes(errJSON), d.now().UnixNano(), uuid, JobRunning)
	if err != nil {
		return fmt.Errorf("job %s: %w", uuid, err)
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return fmt.Errorf("job %s: %w (or not running)", uuid, ErrNotFound)
	}
	return nil
}

// FailRunningJobs marks every running job failed with errJSON; a daemon
// calls it at start for jobs its previous run did not finish.
func (d *DB) FailRunningJobs(ctx context.Context, errJSON []byte) (int64, error) {
	r, err := d.db.ExecContext(ctx, `UPDATE jobs SET state = ?, error = ?, finish_date = ? WHERE state = ?`,
		JobFailed, string(errJSON), d.now().UnixNano(), JobRunning)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// Job is a recorded async job.
type Job struct {
	UUID, API     string
	State         JobState
	Result, Error []byte
	Webhook       string
	Created       time.Time
	Finished      time.Time
}

// GetJob returns a job.
func (d *DB) GetJob(ctx context.Context, uuid string) (*Job, error) {
	var j Job
	var result, errJSON, webhook sql.NullString
	var created int64
	var finished sql.NullInt64
	err := d.db.QueryRowContext(ctx, `SELECT uuid, api, state, result, error, webhook, create_date, finish_date FROM jobs WHERE uuid = ?`, uuid).
		Scan(&j.UUID, &j.API, &j.State, &result, &errJSON, &webhook, &created, &finished)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", uuid, err)
	}
	if result.Valid {
		j.Result = []byte(result.String)
	}
	if errJSON.Valid {
		j.Error = []byte(errJSON.String)
	}
	j.Webhook = webhook.String
	j.Created = time.Unix(0, created).UTC()
	if finished.Valid {
		j.Finished = time.Unix(0, finished.Int64).UTC()
	}
	return &j, nil
}

// PurgeJobs deletes finished jobs older than age (ZStack keeps them 3 h).
func (d *DB) PurgeJobs(ctx context.Context, age time.Duration) (int64, error) {
	r, err := d.db.ExecContext(ctx, `DELETE FROM jobs WHERE state != ? AND finish_date <= ?`, JobRunning, d.now().Add(-age).UnixNano())
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullBytes(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// CopyTo writes a consistent copy of the database to path (VACUUM INTO:
// one read transaction, so writers are not stopped and the copy is a
// snapshot), durably and atomically: a temporary file synced, then renamed.
func (d *DB) CopyTo(ctx context.Context, path string) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if _, err := d.db.ExecContext(ctx, `VACUUM INTO ?`, tmp); err != nil {
		return fmt.Errorf("copy inventory to %s: %w", path, err)
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err == nil {
		err = f.Chmod(0o600)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		if dir, derr := os.Open(filepath.Dir(path)); derr == nil {
			err = dir.Sync()
			dir.Close()
		}
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy inventory to %s: %w", path, err)
	}
	return nil
}

// Check runs SQLite's integrity check.
func (d *DB) Check(ctx context.Context) error {
	var res string
	if err := d.db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return err
	}
	if res != "ok" {
		return fmt.Errorf("integrity check: %s", res)
	}
	return nil
}
