package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/control/inventory"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestAPI(t *testing.T) (*httptest.Server, *inventory.DB, *testClock) {
	t.Helper()
	c := &testClock{t: time.Date(2017, 11, 14, 22, 20, 57, 0, time.UTC)}
	db, err := inventory.Open(context.Background(), filepath.Join(t.TempDir(), "inv.db"), c.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.EnsureAccount(context.Background(), "36c27e8ff05c4780bf6d2fa65700f22e", "admin", inventory.HashPassword("password")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&API{DB: db}).Handler())
	t.Cleanup(srv.Close)
	return srv, db, c
}

type httpResult struct {
	status int
	body   []byte
}

func (h httpResult) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(h.body, &m); err != nil {
		t.Fatalf("reply %q is not JSON: %v", h.body, err)
	}
	return m
}

func call(t *testing.T, method, url, session string, body string) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	if session != "" {
		req.Header.Set("Authorization", session)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{resp.StatusCode, b}
}

func login(t *testing.T, base, password string) httpResult {
	body := `{"logInByAccount":{"accountName":"admin","password":"` + inventory.HashPassword(password) + `"}}`
	return call(t, "PUT", base+"/zstack/v1/accounts/login", "", body)
}

func errCode(t *testing.T, r httpResult) string {
	t.Helper()
	e, _ := r.json(t)["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

func TestSessionsOverHTTP(t *testing.T) {
	srv, db, clock := newTestAPI(t)
	r := login(t, srv.URL, "password")
	if r.status != 200 {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	inv := r.json(t)["inventory"].(map[string]any)
	sess := inv["uuid"].(string)
	if len(sess) != 32 || inv["accountUuid"] != "36c27e8ff05c4780bf6d2fa65700f22e" {
		t.Fatalf("session inventory %v", inv)
	}
	created, err := time.ParseInLocation(GsonTime, inv["createDate"].(string), time.Local)
	expires, err2 := time.ParseInLocation(GsonTime, inv["expiredDate"].(string), time.Local)
	if err != nil || err2 != nil || expires.Sub(created) != SessionTTL {
		t.Fatalf("dates %q %q: %v %v", inv["createDate"], inv["expiredDate"], err, err2)
	}
	if r := call(t, "GET", srv.URL+"/zstack/v1/accounts/sessions/"+sess+"/valid", "", ""); r.status != 200 || r.json(t)["valid"] != true {
		t.Fatalf("valid: %d %s", r.status, r.body)
	}

	// Errors, each with its exact status and code.
	if r := login(t, srv.URL, "wrong"); r.status != 503 || errCode(t, r) != CodeAuthFailed {
		t.Fatalf("wrong password: %d %s", r.status, r.body)
	}
	if r := call(t, "PUT", srv.URL+"/zstack/v1/accounts/login", "", `{"logInByAccount":`); r.status != 400 {
		t.Fatalf("bad JSON: %d %s", r.status, r.body)
	}
	if r := call(t, "PUT", srv.URL+"/zstack/v1/accounts/login", "", `{}`); r.status != 503 || errCode(t, r) != CodeInvalidArg {
		t.Fatalf("no logInByAccount: %d %s", r.status, r.body)
	}
	jobURL := srv.URL + "/zstack/v1/api-jobs/0123456789abcdef0123456789abcdef"
	// The job path needs no credentials: an unknown job is 404 with
	// ZStack's text, with or without a session.
	for _, auth := range []string{"", "Bearer " + sess, "OAuth ffffffffffffffffffffffffffffffff", "OAuth " + sess} {
		if r := call(t, "GET", jobURL, auth, ""); r.status != 404 || string(r.body) != "the job has been expired" {
			t.Fatalf("unknown job with Authorization %q: %d %q", auth, r.status, r.body)
		}
	}

	// Job polling: 202 while running, 200 with the result, 503 with the error.
	ctx := context.Background()
	db.CreateJob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "CreateVolumeBackup", "")
	db.CreateJob(ctx, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "CreateVolumeBackup", "")
	if r := call(t, "GET", srv.URL+"/zstack/v1/api-jobs/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "OAuth "+sess, ""); r.status != 202 || !bytes.Equal(bytes.TrimSpace(r.body), []byte("{}")) {
		t.Fatalf("running job: %d %s", r.status, r.body)
	}
	db.FinishJob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", []byte(`{"inventory":{"uuid":"x"}}`), nil)
	db.FinishJob(ctx, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", nil, []byte(`{"error":{"code":"SYS.1006"}}`))
	if r := call(t, "GET", srv.URL+"/zstack/v1/api-jobs/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "OAuth "+sess, ""); r.status != 200 || r.json(t)["inventory"] == nil {
		t.Fatalf("finished job: %d %s", r.status, r.body)
	}
	if r := call(t, "GET", srv.URL+"/zstack/v1/api-jobs/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "OAuth "+sess, ""); r.status != 503 || errCode(t, r) != CodeOperationFail {
		t.Fatalf("failed job: %d %s", r.status, r.body)
	}

	// Expiry after 7200 s, and log out.
	clock.add(SessionTTL)
	if r := call(t, "GET", srv.URL+"/zstack/v1/accounts/sessions/"+sess+"/valid", "", ""); r.json(t)["valid"] != false {
		t.Fatalf("expired session reported valid: %s", r.body)
	}
	s2 := login(t, srv.URL, "password").json(t)["inventory"].(map[string]any)["uuid"].(string)
	if r := call(t, "DELETE", srv.URL+"/zstack/v1/accounts/sessions/"+s2, "", ""); r.status != 200 {
		t.Fatalf("log out: %d %s", r.status, r.body)
	}
	if r := call(t, "GET", srv.URL+"/zstack/v1/accounts/sessions/"+s2+"/valid", "", ""); r.json(t)["valid"] != false {
		t.Fatalf("logged-out session reported valid: %s", r.body)
	}
}
