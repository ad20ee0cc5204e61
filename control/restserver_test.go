package control

import (
	"fmt"
	"strings"
	"testing"
)

// TestRESTServer encodes the behaviours of ZStack's REST server
// (rest/src/main/java/org/zstack/rest/RestServer.java) a client can tell
// apart, each with its exact status and text.
func TestRESTServer(t *testing.T) {
	d := startTestDaemon(t)
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	d.storageAndVolume(bs, vol, 1<<20)
	auth := "OAuth " + d.session
	body := fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"b"}}`, bs)

	// An async call's location is polled with no credentials at all.
	acc := d.do("POST", "/volumes/"+vol+"/volume-backups", auth, body, nil)
	if acc.status != 202 {
		t.Fatalf("create: %d %s", acc.status, acc.body)
	}
	loc := acc.json(t)["location"].(string)
	done := (&testDaemon{t: t, base: d.base}).client().Wait(loc) // no session
	if done.Status != 200 || !strings.Contains(string(done.Body), `"inventory"`) {
		t.Fatalf("job polled without Authorization: %d %s", done.Status, done.Body)
	}
	job := strings.TrimPrefix(loc, d.base)

	for _, c := range []struct {
		name, method, path, auth, body string
		status                         int
		text                           string // the exact plain-text body; "" for a JSON answer
		code                           string
	}{
		{"job: other method", "DELETE", job, "", "", 405, "only GET method is allowed for querying job status", ""},
		{"job: POST", "POST", job, auth, "{}", 405, "only GET method is allowed for querying job status", ""},
		{"job: unknown", "GET", "/api-jobs/0123456789abcdef0123456789abcdef", "", "", 404, "the job has been expired", ""},
		{"no Authorization", "GET", "/volume-backups", "", "", 400, "missing header 'Authorization'", ""},
		{"another scheme", "GET", "/volume-backups", "Bearer " + d.session, "", 400, "Authorization type must be 'OAuth'", ""},
		{"empty token", "GET", "/volume-backups", "OAuth ", "", 503, "", "ID.1001"},
		{"bare OAuth", "GET", "/volume-backups", "OAuth", "", 503, "", "ID.1001"},
		{"unknown session", "GET", "/volume-backups", "OAuth ffffffffffffffffffffffffffffffff", "", 503, "", "ID.1001"},
		{"unknown path", "GET", "/no-such-resources", auth, "", 404, "no api mapping to /zstack/v1/no-such-resources", ""},
		{"unknown path below a resource", "GET", "/volume-backups/x/y/z", auth, "", 404, "no api mapping to /zstack/v1/volume-backups/x/y/z", ""},
		{"method not taken", "POST", "/volume-backups", auth, "{}", 405, "The method[POST] is not allowed for the path[/zstack/v1/volume-backups]", ""},
		{"method not taken, with a query", "PATCH", "/volumes?limit=1", auth, "", 405, "The method[PATCH] is not allowed for the path[/zstack/v1/volumes?limit=1]", ""},
		{"limit not an integer", "GET", "/volume-backups?limit=abc", auth, "", 400, "Invalid query parameter. 'limit' must be an integer", ""},
		{"start not an integer", "GET", "/volume-backups?start=1.5", auth, "", 400, "Invalid query parameter. 'start' must be an integer", ""},
		{"q without an operator", "GET", "/volume-backups?q=name", auth, "", 400, "Invalid query parameter. The 'name' in the parameter[q] doesn't contain any query operator. Valid query operators are [[!=, >=, <=, !?=, !~=, ~=, ?=, =, >, <, is null, not null]]", ""},
		{"q without a value", "GET", "/volume-backups?q=name=", auth, "", 400, "Invalid query parameter. The 'name=' in parameter[q] is not a key-value pair split by =", ""},
		{"q on an unknown field", "GET", "/volume-backups?q=frob=1", auth, "", 503, "", "SYS.1007"},
		{"unknown action", "PUT", "/volume-backups/" + vol + "/actions", auth, `{"frobnicate":{}}`, 400, "the body doesn't contain action mapping to the URL[/zstack/v1/volume-backups/" + vol + "/actions]", ""},
	} {
		r := d.do(c.method, c.path, c.auth, c.body, nil)
		switch {
		case r.status != c.status:
			t.Errorf("%s: %d %s, want %d", c.name, r.status, r.body, c.status)
		case c.text != "" && string(r.body) != c.text:
			t.Errorf("%s: body %q, want %q", c.name, r.body, c.text)
		case c.code != "" && errCode(t, r) != c.code:
			t.Errorf("%s: %s, want %s", c.name, r.body, c.code)
		}
	}

	// A ';' is part of a value: q=name=x;y matches nothing, it does not
	// drop the condition and return every record.
	r := d.do("GET", "/volume-backups?q=name=b;x", auth, "", nil)
	if invs := r.json(t)["inventories"].([]any); r.status != 200 || len(invs) != 0 {
		t.Errorf("q=name=b;x: %d %s, want no backup", r.status, r.body)
	}
	r = d.do("GET", "/volume-backups?q=name=b&replyWithCount=true", auth, "", nil)
	if r.json(t)["total"] != float64(1) {
		t.Errorf("q=name=b: %s", r.body)
	}
	// Query replies carry ZStack's schema: each object's path and class.
	schema, _ := r.json(t)["schema"].(map[string]any)
	if schema["inventories[0]"] != "org.zstack.header.storage.backup.VolumeBackupInventory" ||
		schema["inventories[0].backupStorageRefs[0]"] != "org.zstack.header.storage.backup.VolumeBackupStorageRefInventory" ||
		schema["inventories[0].mode"] != "org.zstack.header.storage.backup.BackupMode" {
		t.Errorf("query schema %v", schema)
	}
	// An in-list longer than a statement binds (SQLite: 32766) is
	// answered.
	long := make([]string, 40000)
	for i := range long {
		long[i] = fmt.Sprint(i + 2<<20)
	}
	long = append(long, fmt.Sprint(1<<20)) // the volume's size
	r = d.do("GET", "/volumes?q=size?="+strings.Join(long, ","), auth, "", nil)
	if invs, _ := r.json(t)["inventories"].([]any); r.status != 200 || len(invs) != 1 {
		t.Errorf("?= with %d values: %d %.200s", len(long), r.status, r.body)
	}
	// Zero bandwidths are "no limit", as the official Go SDK sends them.
	zero := fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"z","volumeReadBandwidth":0,"volumeWriteBandwidth":0,"networkReadBandwidth":0,"networkWriteBandwidth":0}}`, bs)
	if r := d.job("POST", "/volumes/"+vol+"/volume-backups", zero, nil); r.status != 200 {
		t.Errorf("zero bandwidths: %d %s", r.status, r.body)
	}
}
