package inventory

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openTest(t *testing.T) (*DB, *clock, string) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "inventory.db")
	d, err := Open(context.Background(), path, c.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, c, path
}

func TestMigrationsApplyOnce(t *testing.T) {
	ctx := context.Background()
	d, c, path := openTest(t)
	if v, err := d.SchemaVersion(ctx); err != nil || v != len(migrations) {
		t.Fatalf("schema version %d (%v), want %d", v, err, len(migrations))
	}
	if err := d.EnsureAccount(ctx, "acct1", "admin", HashPassword("password")); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d2, err := Open(ctx, path, c.now)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer d2.Close()
	if _, err := d2.LogIn(ctx, "admin", HashPassword("password"), "s1", time.Hour); err != nil {
		t.Fatalf("data lost across reopen: %v", err)
	}
	// A database from a newer build is refused, not damaged.
	if _, err := d2.db.Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if _, err := Open(ctx, path, c.now); err == nil {
		t.Fatal("opened a database with a newer schema")
	}
}

func TestSessions(t *testing.T) {
	ctx := context.Background()
	d, c, _ := openTest(t)
	if err := d.EnsureAccount(ctx, "acct1", "admin", HashPassword("password")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LogIn(ctx, "admin", HashPassword("wrong"), "s0", time.Hour); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := d.LogIn(ctx, "nobody", HashPassword("password"), "s0", time.Hour); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("unknown account: %v", err)
	}
	s, err := d.LogIn(ctx, "admin", HashPassword("password"), "s1", 7200*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Expires.Sub(s.Created) != 7200*time.Second || s.AccountUUID != "acct1" {
		t.Fatalf("session %+v", s)
	}
	if _, err := d.ValidSession(ctx, "s1"); err != nil {
		t.Fatalf("fresh session invalid: %v", err)
	}
	c.add(7199 * time.Second)
	if _, err := d.ValidSession(ctx, "s1"); err != nil {
		t.Fatalf("session invalid before expiry: %v", err)
	}
	c.add(time.Second)
	if _, err := d.ValidSession(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session: %v", err)
	}
	if n, err := d.PurgeExpiredSessions(ctx); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	s2, _ := d.LogIn(ctx, "admin", HashPassword("password"), "s2", time.Hour)
	if err := d.LogOut(ctx, s2.UUID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ValidSession(ctx, "s2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("logged-out session: %v", err)
	}
	// Changing the password keeps the account.
	if err := d.EnsureAccount(ctx, "other", "admin", HashPassword("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LogIn(ctx, "admin", HashPassword("new"), "s3", time.Hour); err != nil {
		t.Fatalf("new password: %v", err)
	}
}

func TestJobsSurviveRestartAsFailed(t *testing.T) {
	ctx := context.Background()
	d, c, path := openTest(t)
	if err := d.CreateJob(ctx, "j1", "CreateVolumeBackup", ""); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateJob(ctx, "j2", "CreateVolumeBackup", "http://hook"); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishJob(ctx, "j2", []byte(`{"inventory":{}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishJob(ctx, "j2", []byte(`{}`), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("finishing a finished job: %v", err)
	}
	if err := d.CreateJob(ctx, "j1", "x", ""); err == nil {
		t.Fatal("duplicate job id accepted")
	}
	d.Close() // the daemon dies with j1 running

	d2, err := Open(ctx, path, c.now)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	n, err := d2.FailRunningJobs(ctx, []byte(`{"error":{"code":"SYS.1006"}}`))
	if err != nil || n != 1 {
		t.Fatalf("FailRunningJobs: %d %v", n, err)
	}
	j1, err := d2.GetJob(ctx, "j1")
	if err != nil || j1.State != JobFailed || string(j1.Error) == "" {
		t.Fatalf("j1 after restart: %+v %v", j1, err)
	}
	j2, _ := d2.GetJob(ctx, "j2")
	if j2.State != JobSucceeded || string(j2.Result) != `{"inventory":{}}` || j2.Webhook != "http://hook" {
		t.Fatalf("j2: %+v", j2)
	}
	c.add(3*time.Hour + time.Second)
	if n, err := d2.PurgeJobs(ctx, 3*time.Hour); err != nil || n != 2 {
		t.Fatalf("purge after 3 h: %d %v", n, err)
	}
	if _, err := d2.GetJob(ctx, "j1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purged job: %v", err)
	}
}

func TestConcurrentSessions(t *testing.T) {
	ctx := context.Background()
	d, _, _ := openTest(t)
	_ = d.EnsureAccount(ctx, "acct1", "admin", HashPassword("password"))
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "s" + string(rune('A'+i%26)) + string(rune('a'+i/26))
			if _, err := d.LogIn(ctx, "admin", HashPassword("password"), id, time.Hour); err != nil {
				errs <- err
				return
			}
			if _, err := d.ValidSession(ctx, id); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestMigration2MovesUserTags: a version-1 database's backups keep their
// user tags, now as rows of their own, and a deleted backup takes its tags.
func TestMigration2MovesUserTags(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inventory.db")
	saved := migrations
	migrations = saved[:1]
	d, err := Open(ctx, path, nil)
	migrations = saved
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.db.Exec(`INSERT INTO volume_backups(uuid, volume_uuid, name, type, state, status, size, mode, user_tags, create_date, last_op_date)
		VALUES('b1', 'v1', 'n', 'Data', 'Enabled', 'Ready', 1, 'full', '["a","b::c"]', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d, err = Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ids, total, err := d.Query(ctx, UserTags, &Query{Conditions: []Condition{{Field: "resourceUuid", Op: OpEq, Values: []string{"b1"}}}, SortField: "tag", Limit: 10})
	if err != nil || total != 2 {
		t.Fatalf("tags after migration: %v %d %v", ids, total, err)
	}
	tags, err := d.GetUserTags(ctx, ids)
	if err != nil || len(tags) != 2 || tags[0].Tag != "a" || tags[1].Tag != "b::c" || len(tags[0].UUID) != 32 {
		t.Fatalf("tags: %+v %v", tags, err)
	}
	if err := d.DeleteVolumeBackup(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if _, total, _ := d.Query(ctx, UserTags, &Query{Limit: 10}); total != 0 {
		t.Fatalf("%d tags left after their backup was deleted", total)
	}
}

// TestNoSecretAtRest reads the database file as a thief would: no
// password in the form clients send, no live session id.
func TestNoSecretAtRest(t *testing.T) {
	ctx := context.Background()
	d, _, path := openTest(t)
	sent := HashPassword("correct horse battery")
	if err := d.EnsureAccount(ctx, "acct1", "admin", sent); err != nil {
		t.Fatal(err)
	}
	const sid = "5e55105e55105e55105e55105e551051"
	if _, err := d.LogIn(ctx, "admin", sent, sid, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ValidSession(ctx, sid); err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, f := range []string{path, path + "-wal"} {
		b, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, secret := range []string{sent, sid, "correct horse"} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s holds %q in the clear", f, secret[:12])
			}
		}
	}
	// An older build's plain SHA-512 still logs in once, and is rehashed.
	d, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.db.ExecContext(ctx, `UPDATE accounts SET password_sha512 = ?`, sent); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LogIn(ctx, "admin", sent, "s2", time.Hour); err != nil {
		t.Fatalf("legacy hash: %v", err)
	}
	var stored string
	d.db.QueryRowContext(ctx, `SELECT password_sha512 FROM accounts`).Scan(&stored)
	if !strings.HasPrefix(stored, "$argon2id$") {
		t.Fatalf("legacy hash not replaced: %q", stored)
	}
}
